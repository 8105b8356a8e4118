// ferry console — the operation journal (`ferry op list`, filterable by
// group) and one operation (`ferry op ID`) with its parameters and result.

import { h, field, table, patchRows, replace } from "../dom.js";
import { get, seg } from "../api.js";
import { facts } from "../ui.js";
import { time, words, zone } from "../format.js";
import { every, REFRESH_MS } from "../poll.js";
import { operationRow } from "./group-sections.js";

export function operationsPage() {
  const [t, body] = table("Operations, newest first", ["#", "Operation", "Result", "Reason", "Started", "Finished"]);
  t.id = "operations-table";
  const filter = h("input", { type: "text", name: "group", placeholder: "every group" });
  const refresh = async () => {
    const q = filter.value.trim() ? `&group=${seg(filter.value.trim())}` : "";
    const ops = await get(`/v1/operations?limit=50${q}`);
    patchRows(body, ops, (op) => op.id, (op) => JSON.stringify([op, zone()]), operationRow);
  };
  filter.addEventListener("change", () => refresh().catch(() => {}));
  const form = h("form", { class: "inline" }, field("Only this group", filter));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    refresh().catch(() => {});
  });
  const el = h("section", { class: "page" }, h("h1", { text: "Operations" }), form, t);
  return { el, title: "Operations", stop: every(REFRESH_MS, refresh) };
}

export function operationPage(id) {
  const box = h("div");
  const refresh = async () => {
    const op = await get(`/v1/operations/${seg(id)}`);
    const state = (op.state && op.state.state) || "";
    box.dataset.state = state;
    replace(
      box,
      facts([
        ["Operation", words(op.kind)],
        ["Group", op.group_name ? h("a", { href: `#/groups/${seg(op.group_name)}`, text: op.group_name }) : "—"],
        ["Result", words(state)],
        ["Reason", (op.state && op.state.reason) || "—"],
        ["Started", time(op.started_at)],
        ["Finished", time(op.finished_at)],
      ]),
      h("h2", { text: "Parameters" }),
      h("pre", { class: "mono", text: JSON.stringify(op.params || {}, null, 2) }),
      op.transition ? [h("h2", { text: "State transition" }), h("pre", { class: "mono", text: JSON.stringify(op.transition, null, 2) })] : null,
    );
  };
  const el = h(
    "section",
    { class: "page" },
    h("p", { class: "crumbs" }, h("a", { href: "#/operations", text: "Operations" }), ` / #${id}`),
    h("h1", { text: `Operation #${id}` }),
    box,
  );
  return { el, title: `Operation #${id}`, stop: every(REFRESH_MS, refresh) };
}
