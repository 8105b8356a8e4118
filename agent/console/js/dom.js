// ferry console — DOM helpers. Every node is built with createElement and
// textContent: API data never goes through innerHTML, so a group or volume
// name cannot inject markup (and the CSP forbids inline scripts anyway).

/**
 * Creates an element. `attrs` keys: `class`, `text`, `on<event>` (listener),
 * `dataset` (object), boolean attributes as true/false, others as strings.
 * Children are nodes or strings (strings become text nodes); null is skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** Same as `h` for SVG elements. */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") {
      el.textContent = String(value);
    } else if (key === "class") {
      el.setAttribute("class", value);
    } else if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    } else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces every child of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let idCounter = 0;

/** A unique element id (for label/for pairs). */
export function uid(prefix) {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

/**
 * A labelled form field: `<div class="field"><label for=id>text</label>control</div>`.
 * `control` is an element without an id (one is given). Returns [wrapper, control].
 */
export function field(labelText, control, hint) {
  if (!control.id) control.id = uid("f");
  const wrap = h("div", { class: "field" }, h("label", { for: control.id, text: labelText }), control);
  if (hint) {
    const hintEl = h("small", { class: "hint", id: uid("hint"), text: hint });
    control.setAttribute("aria-describedby", hintEl.id);
    wrap.append(hintEl);
  }
  return wrap;
}

/** A `<button type=button>` with an action name (data-action) and a click handler. */
export function button(label, action, onclick, cls = "") {
  return h("button", { type: "button", class: cls || null, dataset: { action }, onclick }, label);
}

/**
 * Keyed, in-place table body update: rows are reused by key, and a row is
 * rebuilt only when its signature changed, so live polling does not replace
 * buttons the operator (or a test) is about to press.
 */
export function patchRows(tbody, items, key, signature, render) {
  const existing = new Map();
  for (const row of Array.from(tbody.children)) existing.set(row.dataset.key, row);
  const wanted = [];
  for (const item of items) {
    const k = String(key(item));
    const sig = signature(item);
    let row = existing.get(k);
    existing.delete(k);
    if (!row || row.dataset.sig !== sig) {
      const fresh = render(item);
      fresh.dataset.key = k;
      fresh.dataset.sig = sig;
      if (row) row.replaceWith(fresh);
      row = fresh;
    }
    wanted.push(row);
  }
  for (const stale of existing.values()) stale.remove();
  wanted.forEach((row, i) => {
    if (tbody.children[i] !== row) tbody.insertBefore(row, tbody.children[i] || null);
  });
}

/** A table with a caption and a header row; returns [table, tbody]. */
export function table(caption, headers, cls = "") {
  const tbody = h("tbody");
  const t = h(
    "table",
    { class: cls || null },
    h("caption", { text: caption }),
    h("thead", {}, h("tr", {}, headers.map((text) => h("th", { scope: "col", class: text === "Actions" ? "actions" : null, text })))),
    tbody,
  );
  return [t, tbody];
}
