fn main() {
    println!("spotkube-extender: not built yet");
}
