//! Table-driven tests: each row is checked in turn, and a failure anywhere in a row's check
//! (an assertion, an `expect`, a helper's panic) names the row.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;

/// Check each `(name, row)` with `check`, in order; a panic while checking a row is raised
/// again as `row "<name>": <message>`.
pub async fn each_row<T>(
    rows: impl IntoIterator<Item = (&'static str, T)>,
    mut check: impl AsyncFnMut(T),
) {
    for (name, row) in rows {
        if let Err(panic) = AssertUnwindSafe(check(row)).catch_unwind().await {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(a panic without a message)");
            panic!("row {name:?}: {message}");
        }
    }
}
