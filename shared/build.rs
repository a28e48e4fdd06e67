//! Rebuilds this crate when a migration is added, not only when one is edited (`sqlx::migrate!`
//! embeds the folder's files, and cargo would otherwise miss a new one), and when the checked
//! queries' data in `.sqlx` is written again (the `query!` macros read it, unseen by cargo).

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-changed=.sqlx");
}
