fn main() {
    println!("spotkube-controller: not built yet");
}
