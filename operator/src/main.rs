//! bridgenet operator (work in progress).
fn main() {
    println!("bridgenet-operator {}", env!("CARGO_PKG_VERSION"));
}
