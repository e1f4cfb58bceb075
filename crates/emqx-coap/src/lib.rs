//! `emqx-coap`: work in progress.
