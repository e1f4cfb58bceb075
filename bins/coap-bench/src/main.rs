//! `coap-bench`: work in progress.

fn main() {
    eprintln!("coap-bench: not implemented yet");
    std::process::exit(2);
}
