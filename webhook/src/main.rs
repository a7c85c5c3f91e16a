fn main() {
    println!("spotkube-webhook: not built yet");
}
