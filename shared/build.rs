//! Rebuilds this crate when a migration is added, not only when one is edited: `sqlx::migrate!`
//! embeds the folder's files, and cargo would otherwise miss a new one.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
