// ferry console — the sections of the group detail page: resources with
// per-volume progress (add/remove), recovery points (marks, deletion),
// standby points, the DR drill, the bound policy (bind/unbind) and the
// operation history with results and failure reasons.

import { h, field, button, table, patchRows, replace } from "../dom.js";
import { call, seg, canAct } from "../api.js";
import { feedback, runAction, openDialog, facts, refusals } from "../ui.js";
import { bytes, rate, time, words } from "../format.js";
import { volumeLine } from "./group-actions.js";

/** Resources: table with a progress bar per volume, add form, remove buttons. */
export function resourcesSection(ctx) {
  const area = feedback();
  const [t, body] = table("Resources", ["Source", "Kind", "Size", "State", "Standby copy / volume", "Progress", "Sync", "Rate", "Actions"]);
  t.id = "resources-table";
  const base = `/v1/groups/${seg(ctx.name)}`;

  const removeRow = async (r) => {
    const ok = await openDialog({
      title: `Remove ${r.uri} from ${ctx.name}?`,
      what: "The resource stops being replicated and the standby drops its copy. The source volume is not touched.",
      volumes: [volumeLine(r)],
      confirmLabel: "Remove resource",
      danger: true,
    });
    if (ok) runAction(area, `Remove ${r.uri}`, () => call("POST", `${base}/resources/remove`, { uris: [r.uri] }), ctx.refresh);
  };

  const render = (r) =>
    h(
      "tr",
      { dataset: { uri: r.uri } },
      h("th", { scope: "row", class: "mono", text: r.uri }),
      h("td", { text: r.kind && r.kind.type === "vm_volume" ? `VM ${r.kind.vm}${r.kind.boot ? " (boot)" : ""}` : "volume" }),
      h("td", { text: bytes(r.size_bytes) }),
      h("td", { text: words(r.state) }),
      h("td", { class: "mono", text: r.volume ? `${r.standby_target} → volume ${r.volume}` : r.standby_target }),
      h("td", {}, h("progress", { max: "1", value: "0", "aria-label": `Progress of ${r.uri}` })),
      h("td", { class: "sync" }),
      h("td", { class: "rate" }),
      h("td", { class: "actions" }, canAct() ? button("Remove…", "remove-resource", () => removeRow(r)) : null),
    );

  const update = (detail) => {
    const resources = detail.resources || [];
    patchRows(body, resources, (r) => r.uri, (r) => JSON.stringify(r), render);
    const prog = (detail.progress && detail.progress.resources) || [];
    for (const row of body.children) {
      const r = resources.find((x) => x.uri === row.dataset.key);
      if (!r) continue;
      const p = prog.find((x) => x.uri === r.uri);
      const [text, done, total] = syncOf(r, p);
      const bar = row.querySelector("progress");
      bar.max = total || 1;
      bar.value = done;
      const sync = row.querySelector(".sync");
      if (sync.textContent !== text) sync.textContent = text;
      sync.dataset.sync = text === "synced" ? "synced" : "pending";
      row.querySelector(".rate").textContent = p && p.rate ? rate(p.rate) : "—";
    }
    if (!resources.length) patchRows(body, [1], () => "none", () => "none", () => h("tr", {}, h("td", { colspan: 9, class: "empty", text: "No resource yet." })));
  };

  const parts = [h("h2", { id: "res-h", text: "Resources" }), area, t];
  if (canAct()) parts.push(addForm(ctx, base, area));
  return { el: h("section", { "aria-labelledby": "res-h" }, parts), update };
}

/** [text, done bytes, total bytes] of one resource's sync. */
function syncOf(r, p) {
  const total = (p && p.bytes_total) || r.size_bytes || 0;
  const remaining = p ? p.bytes_remaining : r.state === "syncing" ? 0 : total;
  const done = Math.max(0, total - remaining);
  const pct = total ? Math.floor((done / total) * 100) : 0;
  if (r.volume) return ["volume made (failed over)", total, total];
  if (r.state === "syncing" && remaining === 0) return ["synced", total, total];
  if (r.state === "syncing") return [`sending changes, ${bytes(remaining)} left`, done, total];
  if (r.state === "initial_sync") return [`initial sync ${pct}%, ${bytes(remaining)} left${p && p.phase ? ` (${p.phase})` : ""}`, done, total];
  return [words(r.state), done, total];
}

function addForm(ctx, base, area) {
  const uris = h("textarea", { name: "uris", rows: "2", class: "mono", placeholder: "file:/srv/vm1.raw\nrbd:pool/image" });
  const vm = h("input", { type: "text", name: "vm" });
  const form = h(
    "form",
    { class: "inline" },
    field("Source URIs, one per line (with a VM the first is the boot volume)", uris),
    field("VM name (optional)", vm),
    h("button", { type: "submit", dataset: { action: "add-resources" }, text: "Add resources" }),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const list = uris.value.split(/\s+/).filter(Boolean);
    const b = { uris: list };
    if (vm.value.trim()) b.vm = vm.value.trim();
    runAction(area, `Add ${list.length} resource(s)`, () => call("POST", `${base}/resources`, b), () => {
      uris.value = "";
      ctx.refresh();
    });
  });
  return form;
}

/** Recovery points: times in the operator's zone, marks, deletion. */
export function pointsSection(ctx) {
  const area = feedback();
  const [t, body] = table("Recovery points (times in the selected zone)", ["Name", "Marks", "Created", "State", "Engine point", "Actions"]);
  t.id = "rp-table";
  const base = `/v1/groups/${seg(ctx.name)}`;
  const del = async (rp) => {
    const ok = await openDialog({
      title: `Delete recovery point ${rp.name}?`,
      what: `The point (${time(rp.created_at)}) is deleted here and on the paired site (later, if it is unreachable): no volume can be restored or failed over to it afterwards.`,
      volumes: ctx.detail().resources.map(volumeLine),
      confirmLabel: "Delete recovery point",
      danger: true,
    });
    if (ok) runAction(area, `Delete ${rp.name}`, () => call("DELETE", `${base}/recovery-points/${seg(rp.name)}`), ctx.refresh);
  };
  const update = (detail) => {
    const drill = detail.drill;
    const rps = (detail.recovery_points || []).slice().reverse();
    const marks = (rp) => {
      const m = [];
      if (rp.kind === "manual") m.push("named");
      if (rp.kind === "policy") m.push("policy");
      if (drill && drill.engine_rp === rp.engine_rp) m.push("pinned (drill)");
      if (rp.pending_remote_delete) m.push("delete pending on peer");
      return m;
    };
    patchRows(
      body,
      rps,
      (rp) => rp.id,
      (rp) => JSON.stringify([rp, marks(rp), localStorage.getItem("ferry.tz")]),
      (rp) =>
        h(
          "tr",
          { dataset: { rp: rp.name, state: rp.state } },
          h("th", { scope: "row", text: rp.name }),
          h("td", {}, marks(rp).map((m) => h("span", { class: `mark ${m.split(" ")[0]}`, text: m }))),
          h("td", { text: time(rp.created_at) }),
          h("td", { text: words(rp.state) }),
          h("td", { class: "mono", text: String(rp.engine_rp) }),
          h("td", { class: "actions" }, canAct() ? button("Delete…", "delete-rp", () => del(rp), "danger") : null),
        ),
    );
    if (!rps.length) patchRows(body, [1], () => "none", () => "none", () => h("tr", {}, h("td", { colspan: 6, class: "empty", text: "No recovery point yet." })));
  };
  return { el: h("section", { "aria-labelledby": "rp-h" }, h("h2", { id: "rp-h", text: "Recovery points" }), area, t), update };
}

/** (standby) Engine recovery points held per standby image. */
export function standbyPointsSection() {
  const box = h("div");
  const update = (points) => {
    const entries = Object.entries(points || {});
    replace(
      box,
      entries.length
        ? h(
            "ul",
            {},
            entries.map(([image, ids]) => {
              // Engine point ids are wall-clock milliseconds.
              const span = ids.length ? `, oldest ${time(Math.min(...ids))}, newest ${time(Math.max(...ids))}` : "";
              return h("li", {}, h("span", { class: "mono", text: image }), `: ${ids.length} point(s)${span}`);
            }),
          )
        : h("p", { text: "No standby image holds a point." }),
    );
  };
  return { el: h("section", { "aria-labelledby": "sp-h" }, h("h2", { id: "sp-h", text: "Standby points" }), box), update };
}

/** The DR drill, when one runs. */
export function drillSection() {
  const box = h("div");
  const el = h("section", { "aria-labelledby": "drill-h", hidden: true }, h("h2", { id: "drill-h", text: "DR drill" }), box);
  const update = (drill) => {
    el.hidden = !drill;
    if (!drill) return;
    replace(
      box,
      facts([
        ["Phase", words(drill.phase)],
        ["Recovery point", drill.recovery_point || `latest held (engine point ${drill.engine_rp})`],
        ["Started", time(drill.started_at)],
      ]),
      h("ul", {}, drill.volumes.map((v) => h("li", { class: "mono", text: `${v.resource} → ${v.volume}` }))),
    );
  };
  return { el, update };
}

/** The bound policy with bind/unbind. */
export function policySection(ctx) {
  const area = feedback();
  const box = h("div");
  const base = `/v1/groups/${seg(ctx.name)}`;
  const select = h("select", { name: "policy" });
  const retention = h("input", { type: "number", name: "retention", min: "1", max: "5", value: "3" });
  const form = h(
    "form",
    { class: "inline" },
    field("Policy", select),
    field("Retention (newest N policy points kept, 1–5)", retention),
    h("button", { type: "submit", dataset: { action: "bind" }, text: "Bind policy" }),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const b = { policy: select.value, retention: Number(retention.value) };
    runAction(area, `Bind ${b.policy}`, () => call("PUT", `${base}/policy`, b), ctx.refresh);
  });
  const unbind = button("Unbind policy", "unbind", () => runAction(area, "Unbind policy", () => call("DELETE", `${base}/policy`), ctx.refresh));
  let lastSig = "";
  const update = (group, policies) => {
    const sig = JSON.stringify([group.policy, policies.map((p) => p.name)]);
    if (sig === lastSig) return;
    lastSig = sig;
    const bound = group.policy ? policies.find((p) => p.id === group.policy.policy_id) : null;
    replace(
      box,
      group.policy
        ? h("p", { dataset: { bound: bound ? bound.name : group.policy.policy_id }, text: `Bound: ${bound ? bound.name : `#${group.policy.policy_id}`}, keeping the newest ${group.policy.retention} policy point(s).` })
        : h("p", { text: "No policy bound: recovery points are made by hand." }),
    );
    replace(select, policies.map((p) => h("option", { value: p.name, text: p.name })));
    form.hidden = !canAct() || !!group.policy || !policies.length;
    unbind.hidden = !canAct() || !group.policy;
  };
  return {
    el: h("section", { "aria-labelledby": "pol-h" }, h("h2", { id: "pol-h", text: "Policy" }), box, canAct() ? [form, unbind, area] : null),
    update,
  };
}

/**
 * The group's newest operations, newest first, with the requests refused
 * in this browser session (the agent journals no refused request).
 */
export function operationsSection(name) {
  const [t, body] = table("Operations of this group (newest first; refused: requests from this browser session)", [
    "#",
    "Operation",
    "Result",
    "Reason",
    "Started",
    "Finished",
  ]);
  t.id = "group-ops";
  const update = (ops) => {
    const refused = refusals()
      // The refusal's subject reads "group 'NAME'".
      .filter((r) => r.subject === `group '${name}'` || r.subject === name)
      .map((r) => ({ refused: true, id: `r${r.at}`, kind: r.op, state: { state: "refused", reason: r.message }, started_at: r.at }));
    const rows = (ops || []).concat(refused).sort((x, y) => y.started_at - x.started_at);
    patchRows(body, rows, (op) => op.id, (op) => JSON.stringify([op, localStorage.getItem("ferry.tz")]), operationRow);
  };
  return { el: h("section", { "aria-labelledby": "ops-h" }, h("h2", { id: "ops-h", text: "Operation history" }), t), update };
}

/** One operation as a table row (also used by the operations page). */
export function operationRow(op) {
  const state = (op.state && op.state.state) || "";
  return h(
    "tr",
    { dataset: { op: op.id, state } },
    h("th", { scope: "row" }, op.refused ? "—" : h("a", { href: `#/operations/${op.id}`, text: `#${op.id}` })),
    h("td", { text: words(op.kind) + (op.group_name ? ` (${op.group_name})` : "") }),
    h("td", { class: `result ${state}`, text: words(state) }),
    h("td", { text: (op.state && op.state.reason) || "" }),
    h("td", { text: time(op.started_at) }),
    h("td", { text: time(op.finished_at) }),
  );
}
