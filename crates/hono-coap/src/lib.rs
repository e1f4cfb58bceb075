//! `hono-coap`: work in progress.
