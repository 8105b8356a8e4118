//! Rebuilds the agent when a file of the web console (`console/`) is added,
//! changed or removed: the files are embedded at compile time
//! (`rust-embed`), and cargo does not otherwise notice a new file there.

fn main() {
    println!("cargo:rerun-if-changed=console");
}
