fn main() {
    eprintln!("updater: no commands yet");
    std::process::exit(2);
}
