fn main() {
    eprintln!("image-tools: no commands yet");
    std::process::exit(2);
}
