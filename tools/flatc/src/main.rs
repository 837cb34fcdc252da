//! Prints the path of the flatc that `flatc-fork` built, so `just flatc` can run it.
fn main() {
    println!("{}", flatc_fork::flatc().display());
}
