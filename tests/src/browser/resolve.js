// Finds the form control a test means (Browser::fill / Browser::select):
// by its label's text (a <label> for it or around it, aria-label,
// aria-labelledby), else by CSS selector. Returns {by, found: [elements]},
// visible matches only when there are any.
const [target] = arguments;
const norm = (s) => (s || "").replace(/\s+/g, " ").trim();
const want = norm(target);
const labelText = (label) => {
  const copy = label.cloneNode(true);
  copy.querySelectorAll("input, select, textarea").forEach((c) => c.remove());
  return norm(copy.textContent);
};
const byIds = (ids) =>
  norm(ids.split(/\s+/).map((id) => document.getElementById(id)?.textContent ?? "").join(" "));
let by = "label";
let found = [];
for (const l of document.querySelectorAll("label")) {
  if (l.control && labelText(l) === want) found.push(l.control);
}
for (const el of document.querySelectorAll("[aria-label]")) {
  if (norm(el.getAttribute("aria-label")) === want) found.push(el);
}
for (const el of document.querySelectorAll("[aria-labelledby]")) {
  if (byIds(el.getAttribute("aria-labelledby")) === want) found.push(el);
}
found = [...new Set(found)];
if (found.length === 0) {
  by = "css";
  try {
    found = Array.from(document.querySelectorAll(target));
  } catch (e) {
    found = [];
  }
}
const shown = found.filter((el) => el.getClientRects().length > 0);
return { by, found: shown.length > 0 ? shown : found };
