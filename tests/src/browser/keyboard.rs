//! Keyboard use of a [`Browser`]: real key presses (WebDriver key actions)
//! and the proof that an action is reachable with Tab alone.

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use serde_json::{json, Value};

use super::{Browser, Key};

/// Focuses the top of the document: the body is made focusable for a
/// moment so that the next Tab starts from the first focusable element,
/// whatever was focused or clicked before.
const FOCUS_TOP_JS: &str = "const b = document.body; const old = b.getAttribute('tabindex');\
    b.setAttribute('tabindex', '-1'); b.focus({ preventScroll: true });\
    if (old === null) b.removeAttribute('tabindex'); else b.setAttribute('tabindex', old);\
    return document.querySelectorAll('a[href], button, input, select, textarea, summary, \
    [tabindex], [contenteditable]').length;";

/// Whether the focused element matches `arguments[0]`, and a short
/// description of it.
const FOCUSED_JS: &str = "const a = document.activeElement;\
    if (!a || a === document.body) return [false, '(nothing)'];\
    const html = a.outerHTML.replace(/\\s+/g, ' ');\
    return [a.matches(arguments[0]), html.length > 100 ? html.slice(0, 97) + '...' : html];";

impl Browser {
    /// Presses and releases `key` on whatever has the focus.
    pub fn press(&self, key: Key) {
        let key = char::from(key);
        let actions = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key });
        let res = self.block_on(self.client.perform_actions(actions));
        self.check(res, "pressing a key");
    }

    /// Presses Enter on whatever has the focus.
    pub fn press_enter(&self) {
        self.press(Key::Enter);
    }

    /// Proves the element matching `css` is reachable by keyboard: starts
    /// at the top of the page and presses Tab until `document.activeElement`
    /// matches `css`; returns how many presses it took (then it has the
    /// focus, and [`Browser::press_enter`] activates it). Panics, listing
    /// the focus order it saw, when a whole round of Tab never gets there.
    pub fn tab_until(&self, css: &str) -> usize {
        let candidates = match self.eval(FOCUS_TOP_JS, vec![]) {
            Value::Number(n) => n.as_u64().unwrap_or(0),
            _ => 0,
        };
        // Every focusable element once, plus the browser's own stops.
        let limit = usize::try_from(candidates)
            .unwrap_or(usize::MAX)
            .saturating_add(3);
        let mut seen = Vec::new();
        for presses in 1..=limit {
            self.press(Key::Tab);
            let focused = self.eval(FOCUSED_JS, vec![json!(css)]);
            if focused[0] == Value::Bool(true) {
                return presses;
            }
            seen.push(super::text_of_json(&focused[1]));
        }
        self.fail(&format!(
            "{css:?} is not reachable with Tab: {limit} presses from the top focused, in order:\n  {}",
            seen.join("\n  ")
        ))
    }
}
