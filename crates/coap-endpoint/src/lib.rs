//! `coap-endpoint`: work in progress.
