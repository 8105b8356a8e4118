//! Named hold points for end-to-end fault tests, usable anywhere in the
//! engine and the agent (the standby's commit steps have their own,
//! [`crate::standby::failpoint`]).
//!
//! A test proves that its fault landed by holding the process at a point it
//! names and seeing the point reached before it kills or cuts. With the
//! `failpoints` feature, `FAILPOINTS=NAME=ACTIONS` configures a point with
//! the `fail` crate's grammar; the action `return(ARG)` is what makes the
//! point *land*: the process logs `fail point reached` (info, with the
//! point's name), then
//! - `return(hold)` stops the calling thread until the process is killed;
//! - `return(MS)` pauses it for MS milliseconds and goes on;
//! - `return(wait:PATH)` holds it until the file PATH exists, then goes on
//!   (a test decides when the held step runs: e.g. after it stopped and
//!   resumed the process, to make the step a late one).
//!
//! Counts select the moment: `sender::after-batch=3*off->1*return(hold)`
//! lets three batches pass and holds the sender after the fourth. Other
//! actions (`off`, `sleep(MS)`, …) run as the `fail` crate defines them and
//! log nothing. Without the feature, [`reach`] is an empty inline function.

/// Evaluates the hold point `name` (see the module doc).
#[inline(always)]
pub fn reach(name: &'static str) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |arg: Option<String>| {
        tracing::info!(point = name, "fail point reached");
        hold(name, arg.as_deref());
    });
    let _ = name;
}

/// Holds the calling thread as a landed point's argument says: `hold` (or
/// no argument) until the process is killed, a number of milliseconds for
/// that long, `wait:PATH` until the file PATH exists.
#[cfg(feature = "failpoints")]
fn hold(name: &'static str, arg: Option<&str>) {
    if let Some(path) = arg.and_then(|a| a.trim().strip_prefix("wait:")) {
        while !std::path::Path::new(path).exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tracing::info!(point = name, path, "fail point released");
        return;
    }
    match arg.and_then(|a| a.trim().parse::<u64>().ok()) {
        Some(ms) => std::thread::sleep(std::time::Duration::from_millis(ms)),
        None => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
    }
}
