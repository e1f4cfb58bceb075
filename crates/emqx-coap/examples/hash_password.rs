#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Prints an argon2id PHC string for a password, for the `password_hash`
//! of the authentication file:
//!
//! ```sh
//! cargo run -p emqx-coap --example hash_password -- 'the password'
//! cargo run -p emqx-coap --example hash_password -- --bcrypt 'the password'
//! ```

use argon2::{Argon2, PasswordHasher};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (use_bcrypt, password) = match args.as_slice() {
        [flag, password] if flag == "--bcrypt" => (true, password),
        [password] => (false, password),
        _ => {
            eprintln!("usage: hash_password [--bcrypt] PASSWORD");
            std::process::exit(2);
        }
    };
    let hash = if use_bcrypt {
        bcrypt::hash(password, bcrypt::DEFAULT_COST).map_err(|e| e.to_string())
    } else {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    };
    match hash {
        Ok(hash) => println!("{hash}"),
        Err(e) => {
            eprintln!("hash_password: {e}");
            std::process::exit(1);
        }
    }
}
