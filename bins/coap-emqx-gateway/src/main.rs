//! `coap-emqx-gateway`: work in progress.

fn main() {
    eprintln!("coap-emqx-gateway: not implemented yet");
    std::process::exit(2);
}
