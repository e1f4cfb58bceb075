//! `coap-hono-adapter`: work in progress.

fn main() {
    eprintln!("coap-hono-adapter: not implemented yet");
    std::process::exit(2);
}
