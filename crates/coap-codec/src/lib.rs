//! `coap-codec`: work in progress.
