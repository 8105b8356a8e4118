// The accessibility check of the ferry test harness (Browser::assert_accessible):
// returns one line per violation, [] for a clean page. See browser.rs for
// the rules and why each exists.
const out = [];
const norm = (s) => (s || "").replace(/\s+/g, " ").trim();
const describe = (el) => {
  const html = el.outerHTML.replace(/\s+/g, " ");
  return html.length > 140 ? html.slice(0, 137) + "..." : html;
};
const byIds = (ids) =>
  norm(ids.split(/\s+/).map((id) => document.getElementById(id)?.textContent ?? "").join(" "));
const labelText = (label) => {
  const copy = label.cloneNode(true);
  copy.querySelectorAll("input, select, textarea").forEach((c) => c.remove());
  return norm(copy.textContent);
};
const ariaNamed = (el) => {
  if (norm(el.getAttribute("aria-label"))) return true;
  const ids = el.getAttribute("aria-labelledby");
  return !!(ids && byIds(ids));
};

// 1. Every form control has a label.
for (const el of document.querySelectorAll("input, select, textarea")) {
  const type = (el.getAttribute("type") || "").toLowerCase();
  if (el.tagName === "INPUT" && type === "hidden") continue;
  if (el.tagName === "INPUT" && (type === "submit" || type === "reset")) continue;
  if (el.tagName === "INPUT" && type === "button") {
    if (!norm(el.value) && !ariaNamed(el)) out.push(`input button without a value or aria-label: ${describe(el)}`);
    continue;
  }
  if (el.tagName === "INPUT" && type === "image") {
    if (!norm(el.getAttribute("alt")) && !ariaNamed(el)) out.push(`image input without alt: ${describe(el)}`);
    continue;
  }
  const labelled = Array.from(el.labels || []).some((l) => labelText(l) !== "") || ariaNamed(el);
  if (!labelled) {
    out.push(`form control without a label (<label for>, a wrapping <label>, aria-label or aria-labelledby): ${describe(el)}`);
  }
}

// 2. Every click action is on something the keyboard reaches.
const hooked = window.__ferry ? window.__ferry.targets : null;
const interactive = "button, a[href], input:not([type=hidden]), select, textarea, summary, [tabindex]";
const native = (el) => {
  const t = el.tagName;
  if (t === "BUTTON" || t === "SELECT" || t === "TEXTAREA" || t === "SUMMARY" || t === "OPTION") return true;
  if (t === "A" && el.hasAttribute("href")) return true;
  if (t === "INPUT" && el.type !== "hidden") return true;
  if (t === "LABEL" && el.control) return true;
  return false;
};
const keyboardWithRole = (el) => {
  const ti = el.getAttribute("tabindex");
  return ti !== null && parseInt(ti, 10) >= 0 && norm(el.getAttribute("role")) !== "";
};
const htmxVerbs = ["hx-get", "hx-post", "hx-put", "hx-patch", "hx-delete"];
for (const el of document.querySelectorAll("*")) {
  if (el === document.documentElement || el === document.body) continue;
  const why = [];
  if (el.hasAttribute("onclick") || typeof el.onclick === "function") why.push("onclick");
  const verb = htmxVerbs.find((v) => el.hasAttribute(v));
  if (verb && el.tagName !== "FORM") {
    const trigger = el.getAttribute("hx-trigger");
    if (!trigger || /\bclick\b/.test(trigger)) why.push(verb);
  }
  // A listener added with addEventListener on a container of buttons or
  // links is event delegation: the keyboard reaches the actions inside.
  if (hooked && hooked.has(el) && !el.querySelector(interactive)) why.push("click listener");
  if (why.length === 0 || native(el) || keyboardWithRole(el)) continue;
  out.push(`click action (${why.join(", ")}) the keyboard cannot reach: use <button> or <a href>, or tabindex="0" and a role: ${describe(el)}`);
}

// 3. No positive tabindex (it overrides the document's tab order).
for (const el of document.querySelectorAll("[tabindex]")) {
  const v = parseInt(el.getAttribute("tabindex"), 10);
  if (v > 0) out.push(`positive tabindex ${v}: ${describe(el)}`);
}

// 4. Images have alt (alt="" for decoration).
for (const el of document.querySelectorAll("img")) {
  if (!el.hasAttribute("alt")) out.push(`image without alt: ${describe(el)}`);
}

// 5. Buttons and links have a name a screen reader can say.
for (const el of document.querySelectorAll("button, a[href], [role=button]")) {
  const imgAlt = Array.from(el.querySelectorAll("img[alt]")).some((i) => norm(i.alt) !== "");
  if (!norm(el.textContent) && !imgAlt && !ariaNamed(el) && !norm(el.getAttribute("title"))) {
    out.push(`button or link without a name (text, aria-label, title or an img alt): ${describe(el)}`);
  }
}
return out;
