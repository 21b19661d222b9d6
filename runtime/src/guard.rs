//! Running third-party code that may panic on hostile input (tract on a malformed graph) without
//! letting the panic escape or print: [`no_panic`] turns it into the panic's message.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while this thread runs inside [`no_panic`]: its panics are caught there, not printed.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; a panic inside it is caught and returned as its message, and is not printed (the
/// process's panic hook still runs for panics anywhere else). Whatever `f` was changing when it
/// panicked may be left half-updated: callers use this where that is harmless (building new
/// values; running a graph whose state is reset at every run) or report an internal error.
pub fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    use super::no_panic;

    #[test]
    fn a_panic_becomes_its_message_and_values_pass_through() {
        assert_eq!(no_panic(|| 7), Ok(7));
        let err = no_panic(|| -> u8 { panic!("bad graph {}", 3) }).unwrap_err();
        assert!(err.contains("bad graph 3"), "{err}");
        let nested = no_panic(|| no_panic(|| -> u8 { panic!("inner") }).unwrap_err());
        assert!(nested.unwrap().contains("inner"));
    }
}
