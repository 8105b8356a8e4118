// ferry console — the group actions toolbar: start/stop sync, manual
// recovery point, planned migration, unplanned failover (latest or chosen
// point, copies), restore, DR drill start/end, reprotect, RPO thresholds and
// delete. Each destructive one confirms in a dialog that says what happens
// to which volumes; refusals (the state table's reason) show next to it.

import { h, field, button } from "../dom.js";
import { call, seg } from "../api.js";
import { openDialog, runAction } from "../ui.js";
import { time } from "../format.js";

/** The toolbar of actions for `ctx` (name, detail(), refresh(), area). */
export function groupActions(ctx) {
  const g = () => ctx.detail().group;
  const base = `/v1/groups/${seg(ctx.name)}`;
  const run = (label, method, path, body) => runAction(ctx.area, label, () => call(method, path, body), ctx.refresh);
  const volumes = () => ctx.detail().resources.map(volumeLine);
  const points = () => ctx.detail().recovery_points.filter((rp) => rp.state === "complete");

  const start = button("Start sync", "start", () => run(`Start sync of ${ctx.name}`, "POST", `${base}/start`));
  const stop = button("Stop sync…", "stop", async () => {
    const ok = await openDialog({
      title: `Stop sync of ${ctx.name}?`,
      what: "Replication of every resource stops. The standby drops the group's recovery points: they cannot be failed over to or restored from afterwards.",
      volumes: volumes(),
      confirmLabel: "Stop sync",
      danger: true,
    });
    if (ok) run(`Stop sync of ${ctx.name}`, "POST", `${base}/stop`);
  });
  const rp = button("Create recovery point…", "create-rp", async () => {
    const name = h("input", { type: "text", name: "rp_name", placeholder: "default manual-TIMESTAMP" });
    const body = await openDialog({
      title: `Manual recovery point of ${ctx.name}`,
      what: "The next replication cycle that starts becomes a recovery point of every resource (at most 5 manual points, only while syncing).",
      body: [field("Recovery point name", name)],
      confirmLabel: "Create recovery point",
      collect: () => (name.value.trim() ? { name: name.value.trim() } : {}),
    });
    if (body) run(`Create recovery point ${body.name || ""}`.trim(), "POST", `${base}/recovery-points`, body);
  });
  const migrate = button("Planned migration…", "migrate", async () => {
    const ok = await openDialog({
      title: `Planned migration of ${ctx.name}?`,
      what: "Quiesce the volumes first (VMs powered off, volumes detached) and unbind the policy. Replication stops, a final sync sends everything written before now, the standby writes each volume at that point into a new volume and its checksum is compared with the source here; then the roles swap: the remote site becomes the primary and this site its standby. Start sync on the new primary to replicate back.",
      volumes: volumes(),
      confirmLabel: "Migrate",
      danger: true,
    });
    if (ok) run(`Migrate ${ctx.name}`, "POST", `${base}/migrate`);
  });
  const failover = button("Failover…", "failover", () => failoverDialog(ctx, base, run, volumes, points));
  const restore = button("Restore…", "restore", () => restoreDialog(ctx, base, run, points));
  const drill = button("Start DR drill…", "drill-start", async () => {
    const choice = pointSelect(points(), "the newest point every standby copy holds");
    const body = await openDialog({
      title: `Start a DR drill of ${ctx.name}?`,
      what: "Makes a writable volume of every resource at the chosen recovery point (a clone or reflink; the standby copies are never touched, replication goes on). The point stays pinned until the drill ends.",
      volumes: volumes(),
      body: [field("Recovery point", choice)],
      confirmLabel: "Start drill",
      danger: true,
      collect: () => (choice.value ? { recovery_point: choice.value } : {}),
    });
    if (body) run(`Start drill of ${ctx.name}`, "POST", `${base}/drill`, body);
  });
  const endDrill = button("End DR drill…", "drill-end", async () => {
    const d = ctx.detail().drill;
    const ok = await openDialog({
      title: `End the DR drill of ${ctx.name}?`,
      what: "Removes exactly the drill's volumes (what was written to them is lost) and unpins its recovery point.",
      volumes: d ? d.volumes.map((v) => v.volume) : [],
      confirmLabel: "End drill",
      danger: true,
    });
    if (ok) run(`End drill of ${ctx.name}`, "DELETE", `${base}/drill`);
  });
  const reprotect = button("Reprotect…", "reprotect", async () => {
    const ok = await openDialog({
      title: `Reprotect ${ctx.name}?`,
      what: "The old primary site (reachable again) becomes this group's standby: its volumes become the standby copies and only the differences cross the link. Its writes after the failover's point stay in its old volumes (named in the operation's result) and are rolled back in the copies. Earlier recovery points become unusable.",
      volumes: volumes(),
      confirmLabel: "Reprotect",
      danger: true,
    });
    if (ok) run(`Reprotect ${ctx.name}`, "POST", `${base}/reprotect`);
  });
  const thresholds = button("RPO thresholds…", "rpo", async () => {
    const rpo = g().rpo || {};
    const warn = h("input", { type: "number", name: "rpo_warn_secs", min: "0", value: rpo.warn_secs ?? "" });
    const crit = h("input", { type: "number", name: "rpo_crit_secs", min: "0", value: rpo.crit_secs ?? "" });
    const body = await openDialog({
      title: `RPO thresholds of ${ctx.name} (this site)`,
      what: "Health says WARNING or CRITICAL when the RPO lag is above these. Empty or 0 removes a threshold.",
      body: [field("Warning above (seconds)", warn), field("Critical above (seconds)", crit)],
      confirmLabel: "Save",
      collect: () => ({ rpo_warn_secs: Number(warn.value) || 0, rpo_crit_secs: Number(crit.value) || 0 }),
    });
    if (body) run(`RPO thresholds of ${ctx.name}`, "PATCH", base, body);
  });
  const del = button(
    "Delete group…",
    "delete-group",
    async () => {
      const primary = g().role === "primary";
      const ok = await openDialog({
        title: `Delete group ${ctx.name}?`,
        what: primary
          ? "The group and its standby group on the paired site are deleted, with every recovery point and standby copy. The source volumes are not touched."
          : "This standby group is deleted with its recovery points. Volumes a failover made are never removed.",
        volumes: volumes(),
        confirmLabel: "Delete group",
        danger: true,
      });
      if (ok) {
        const result = await run(`Delete ${ctx.name}`, "DELETE", base);
        if (result && result.state && result.state.state === "succeeded") location.hash = "#/groups";
      }
    },
    "danger",
  );

  // The page puts the set of the group's role first; every action stays
  // available: the agent's state table decides, and its refusal is shown.
  return h(
    "div",
    { class: "toolbar", role: "group", "aria-label": "Group actions" },
    h("div", { class: "tool-set replication" }, h("span", { class: "tool-label", text: "Replication (primary site)" }), start, stop, rp, migrate),
    h("div", { class: "tool-set recovery" }, h("span", { class: "tool-label", text: "Recovery (standby site)" }), failover, restore, drill, endDrill, reprotect),
    h("div", { class: "tool-set" }, h("span", { class: "tool-label", text: "Group" }), thresholds, del),
    h("p", { class: "hint", text: "An action the group's role or state does not allow is refused by the agent, with the reason shown here." }),
  );
}

/** A resource as the dialogs list it: source URI, its standby copy and, after a failover, its volume. */
export function volumeLine(r) {
  let line = `${r.uri} → standby copy ${r.standby_target}`;
  if (r.volume) line += ` (volume ${r.volume})`;
  return line;
}

function pointSelect(points, defaultText) {
  return h(
    "select",
    { name: "recovery_point" },
    h("option", { value: "", text: `Latest: ${defaultText}` }),
    points
      .slice()
      .reverse()
      .map((rp) => h("option", { value: rp.name, text: `${rp.name} (${time(rp.created_at)})` })),
  );
}

async function failoverDialog(ctx, base, run, volumes, points) {
  const choice = pointSelect(points(), "the newest point every standby copy holds");
  const copy = h("input", { type: "checkbox", name: "copy" });
  const body = await openDialog({
    title: `Fail over ${ctx.name} to this site?`,
    what: "Unplanned failover, also while the primary site is unreachable: every standby copy is fenced (it takes no more replication) and each resource becomes a volume at the chosen recovery point; this group becomes the new primary and the old primary can no longer change it. At an older point the other points become unusable.",
    volumes: volumes(),
    body: [
      field("Recovery point", choice),
      h("div", { class: "field check" }, copy, h("label", { for: (copy.id = "failover-copy"), text: "Full, independent copies (the standby copies stay as they are)" })),
    ],
    confirmLabel: "Fail over",
    danger: true,
    collect: () => {
      const b = { copy: copy.checked };
      if (choice.value) b.recovery_point = choice.value;
      return b;
    },
  });
  if (body) run(`Failover of ${ctx.name}`, "POST", `${base}/failover`, body);
}

async function restoreDialog(ctx, base, run, points) {
  const resources = ctx.detail().resources;
  const resource = h(
    "select",
    { name: "resource" },
    resources.map((r) => h("option", { value: r.uri, text: r.uri })),
  );
  const rp = h(
    "select",
    { name: "recovery_point" },
    points()
      .slice()
      .reverse()
      .map((p) => h("option", { value: p.name, text: `${p.name} (${time(p.created_at)})` })),
  );
  const out = h("input", { type: "text", name: "out", required: true, placeholder: "/srv/restore/vm1.raw or an image name" });
  const copy = h("input", { type: "checkbox", name: "copy", id: "restore-copy" });
  const body = await openDialog({
    title: `Restore a volume of ${ctx.name}`,
    what: "Writes one resource as it was at a complete recovery point into a NEW volume (a clone or reflink where the storage allows it). The standby copy and the source are not changed.",
    body: [
      field("Resource", resource),
      field("Recovery point", rp),
      field("New volume (absolute file path, or an image name with an RBD standby)", out),
      h("div", { class: "field check" }, copy, h("label", { for: "restore-copy", text: "Full, independent copy" })),
    ],
    confirmLabel: "Restore",
    danger: true,
    collect: () => {
      if (!resource.value) return "The group has no resource.";
      if (!rp.value) return "No complete recovery point to restore from.";
      if (!out.value.trim()) return "Name the new volume.";
      return { resource: resource.value, recovery_point: rp.value, out: out.value.trim(), copy: copy.checked };
    },
  });
  if (body) run(`Restore ${body.resource} at ${body.recovery_point}`, "POST", `${base}/restore`, body);
}
