// Installed by the ferry test harness (tests/src/browser.rs) before any page
// script runs, on every document: it records which elements get click-like
// listeners (for the accessibility check) and uncaught page errors (for
// failure messages). It changes nothing a page can observe through the DOM.
(() => {
  if (window.__ferry) return;
  const clickTypes = new Set([
    "click", "dblclick", "auxclick", "mousedown", "mouseup", "pointerdown", "pointerup",
  ]);
  const targets = new WeakSet();
  const errors = [];
  Object.defineProperty(window, "__ferry", { value: { targets, errors }, enumerable: false });
  const add = EventTarget.prototype.addEventListener;
  EventTarget.prototype.addEventListener = function (type, listener, options) {
    if (clickTypes.has(type) && this instanceof Element) targets.add(this);
    return add.call(this, type, listener, options);
  };
  add.call(window, "error", (e) => {
    const where = e.filename ? ` (${e.filename}:${e.lineno})` : "";
    errors.push(`${e.message || e.error || "error"}${where}`);
  });
  add.call(window, "unhandledrejection", (e) => {
    errors.push(`unhandled promise rejection: ${e.reason}`);
  });
})();
