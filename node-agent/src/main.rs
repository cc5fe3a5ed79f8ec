//! bridgenet node agent (work in progress).
fn main() {
    println!("bridgenet-agent {}", env!("CARGO_PKG_VERSION"));
}
