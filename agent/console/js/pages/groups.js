// ferry console — the protection-group list: every group with its role,
// state, RPO lag, rate and remaining bytes (GET /v1/status, refreshed every
// 2 s in place), this site's health roll-up (`ferry health`), and creating a
// group.

import { h, field, table, patchRows, replace } from "../dom.js";
import { call, get, seg, canAct } from "../api.js";
import { feedback, runAction } from "../ui.js";
import { bytes, rate, seconds, words } from "../format.js";
import { every, REFRESH_MS } from "../poll.js";

export function groupsPage() {
  const health = h("div", { class: "health" });
  const [groupsTable, body] = table("Protection groups (live)", [
    "Group",
    "Role",
    "State",
    "Replication",
    "RPO lag",
    "Rate",
    "Remaining",
    "Resources",
    "Recovery points",
  ]);
  groupsTable.id = "groups-table";

  const refresh = async () => {
    const [status, report] = await Promise.all([get("/v1/status"), get("/v1/health/groups")]);
    const groups = status.groups || [];
    patchRows(body, groups, (g) => g.name, (g) => JSON.stringify(g), groupRow);
    if (!groups.length) patchRows(body, [{ name: "" }], () => "none", () => "none", () => h("tr", {}, h("td", { colspan: 9, class: "empty", text: "No group yet." })));
    renderHealth(health, report);
  };

  const parts = [h("h1", { text: "Protection groups" }), health, groupsTable];
  if (canAct()) parts.push(createSection(refresh));
  return { el: h("section", { class: "page" }, parts), title: "Protection groups", stop: every(REFRESH_MS, refresh) };
}

function groupRow(g) {
  const p = g.progress || {};
  return h(
    "tr",
    { dataset: { group: g.name, state: g.state } },
    h("th", { scope: "row" }, h("a", { href: `#/groups/${seg(g.name)}`, text: g.name })),
    h("td", { text: g.role + (g.new_primary ? " (new primary)" : "") }),
    h("td", { class: `state ${stateClass(g.state)}`, text: words(g.state) }),
    h("td", { text: g.progress ? words(p.state) : "—" }),
    h("td", { text: seconds(p.rpo_lag_secs) }),
    h("td", { text: g.progress ? rate(p.rate) : "—" }),
    h("td", { text: g.progress ? bytes(p.bytes_remaining) : "—" }),
    h("td", { class: "num", text: String(g.resources ?? "—") }),
    h("td", { class: "num", text: String(g.recovery_points ?? "—") }),
  );
}

/** CSS class of a group state: ok (settled), busy (transitional), bad (failed). */
export function stateClass(state) {
  if (!state) return "";
  if (state.endsWith("_failed")) return "bad";
  if (["syncing", "mapped", "failed_over", "created"].includes(state)) return "ok";
  return "busy";
}

function renderHealth(el, report) {
  const status = report.status || "ok";
  el.dataset.status = status;
  el.className = `health ${status}`;
  const problems = report.problems || [];
  replace(
    el,
    h("h2", { text: `Health: ${status.toUpperCase()}` }),
    problems.length
      ? h(
          "ul",
          {},
          problems.map((p) => h("li", { class: p.level, text: `${p.level.toUpperCase()} ${p.group}: ${p.message} (${words(p.check)})` })),
        )
      : h("p", { text: "Every group is OK." }),
  );
}

function createSection(refresh) {
  const name = h("input", { type: "text", name: "name", required: true });
  const service = h("select", { name: "service" }, h("option", { value: "", text: "the only service" }));
  const project = h("input", { type: "text", name: "remote_project" });
  const warn = h("input", { type: "number", name: "rpo_warn_secs", min: "1" });
  const crit = h("input", { type: "number", name: "rpo_crit_secs", min: "1" });
  const area = feedback();
  get("/v1/services")
    .then((list) => list.forEach((s) => service.append(h("option", { value: s.name, text: s.name }))))
    .catch(() => {});
  const form = h(
    "form",
    { class: "inline" },
    field("Group name", name),
    field("Service", service),
    field("Remote project", project),
    field("RPO warning above (s)", warn),
    field("RPO critical above (s)", crit),
    h("button", { type: "submit", class: "primary", dataset: { action: "create-group" }, text: "Create group" }),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = { name: name.value.trim(), remote_project: project.value.trim() };
    if (service.value) body.service = service.value;
    if (warn.value) body.rpo_warn_secs = Number(warn.value);
    if (crit.value) body.rpo_crit_secs = Number(crit.value);
    runAction(area, `Create group ${body.name}`, () => call("POST", "/v1/groups", body), () => {
      name.value = "";
      refresh();
    });
  });
  return h(
    "section",
    { "aria-labelledby": "create-h" },
    h("h2", { id: "create-h", text: "Create a protection group (on the primary)" }),
    h("p", { text: "Its standby group is created and mapped on the paired site." }),
    form,
    area,
  );
}
