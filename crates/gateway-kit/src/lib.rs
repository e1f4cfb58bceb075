//! `gateway-kit`: work in progress.
