//! `coap-dtls`: work in progress.
