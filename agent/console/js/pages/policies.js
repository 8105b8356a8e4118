// ferry console — recovery-point policies: the list with the groups each is
// bound to, creating one (daily / weekly / monthly at a wall time in a
// zone, an effective window), binding it to a group, and deleting it.

import { h, field, button, table, patchRows, uid } from "../dom.js";
import { call, get, seg, canAct } from "../api.js";
import { feedback, runAction, openDialog } from "../ui.js";
import { schedule, time, zone, zones } from "../format.js";
import { every, REFRESH_MS } from "../poll.js";

const WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

export function policiesPage() {
  const area = feedback();
  const [t, body] = table("Policies", ["Policy", "Schedule", "Zone", "Effective from", "Until", "Bound groups", "Actions"]);
  t.id = "policies-table";
  let groups = [];

  const refresh = async () => {
    const [policies, list] = await Promise.all([get("/v1/policies"), get("/v1/groups")]);
    groups = list;
    const boundTo = (p) => list.filter((g) => g.policy && g.policy.policy_id === p.id).map((g) => `${g.name} (keep ${g.policy.retention})`);
    patchRows(body, policies, (p) => p.id, (p) => JSON.stringify([p, boundTo(p), zone()]), (p) => row(p, boundTo(p)));
    if (!policies.length) patchRows(body, [1], () => "none", () => "none", () => h("tr", {}, h("td", { colspan: 7, class: "empty", text: "No policy yet." })));
  };

  const row = (p, bound) => {
    const s = p.schedule || {};
    return h(
      "tr",
      { dataset: { policy: p.name } },
      h("th", { scope: "row", text: p.name }),
      h("td", { text: schedule(s.schedule) }),
      h("td", { text: s.tz }),
      h("td", { text: s.effective_from ? time(Date.parse(s.effective_from)) : "—" }),
      h("td", { text: s.effective_until ? time(Date.parse(s.effective_until)) : "—" }),
      h("td", { text: bound.length ? bound.join(", ") : "none" }),
      h(
        "td",
        { class: "actions" },
        canAct()
          ? [
              button("Bind to group…", "bind-group", () => bindDialog(p)),
              button("Delete…", "delete-policy", () => deletePolicy(p, bound), "danger"),
            ]
          : null,
      ),
    );
  };

  const bindDialog = async (p) => {
    const group = h("select", { name: "group" }, groups.filter((g) => !g.policy).map((g) => h("option", { value: g.name, text: g.name })));
    const retention = h("input", { type: "number", name: "retention", min: "1", max: "5", value: "3" });
    const b = await openDialog({
      title: `Bind ${p.name} to a group`,
      what: "The group gets a recovery point at every scheduled time; the newest N are kept.",
      body: [field("Group", group), field("Retention (1–5)", retention)],
      confirmLabel: "Bind",
      collect: () => (group.value ? { group: group.value, retention: Number(retention.value) } : "No unbound group on this site."),
    });
    if (b) runAction(area, `Bind ${p.name} to ${b.group}`, () => call("PUT", `/v1/groups/${seg(b.group)}/policy`, { policy: p.name, retention: b.retention }), refresh);
  };

  const deletePolicy = async (p, bound) => {
    const ok = await openDialog({
      title: `Delete policy ${p.name}?`,
      what: bound.length
        ? `It is bound to ${bound.join(", ")}: the agent refuses until it is unbound.`
        : "No group is bound to it. Recovery points it made stay until deleted.",
      confirmLabel: "Delete policy",
      danger: true,
    });
    if (ok) runAction(area, `Delete policy ${p.name}`, () => call("DELETE", `/v1/policies/${seg(p.name)}`), refresh);
  };

  const parts = [h("h1", { text: "Policies" }), area, t];
  if (canAct()) parts.push(createSection(refresh));
  return { el: h("section", { class: "page" }, parts), title: "Policies", stop: every(REFRESH_MS * 2, refresh) };
}

function createSection(refresh) {
  const area = feedback();
  const name = h("input", { type: "text", name: "name", required: true });
  const kind = h("select", { name: "kind" }, ["daily", "weekly", "monthly"].map((k) => h("option", { value: k, text: k })));
  const at = h("input", { type: "time", name: "at", value: "02:30", required: true });
  const tz = h("select", { name: "tz" }, zones().map((z) => h("option", { value: z, selected: z === "UTC", text: z })));
  const dayBoxes = WEEKDAYS.map((d) => {
    const box = h("input", { type: "checkbox", name: "weekday", value: d, id: uid("wd") });
    return [box, h("span", { class: "check" }, box, h("label", { for: box.id, text: d }))];
  });
  const weekdays = h("fieldset", { class: "weekdays", hidden: true }, h("legend", { text: "Weekdays" }), dayBoxes.map(([, w]) => w));
  const days = h("input", { type: "text", name: "days", placeholder: "1,15" });
  const monthEnd = h("input", { type: "checkbox", name: "month_end", id: uid("me") });
  const monthly = h(
    "fieldset",
    { class: "monthly", hidden: true },
    h("legend", { text: "Days of the month" }),
    field("Days (comma-separated, 1–31)", days),
    h("span", { class: "check" }, monthEnd, h("label", { for: monthEnd.id, text: "Month end" })),
  );
  const from = h("input", { type: "datetime-local", name: "from" });
  const until = h("input", { type: "datetime-local", name: "until" });
  kind.addEventListener("change", () => {
    weekdays.hidden = kind.value !== "weekly";
    monthly.hidden = kind.value !== "monthly";
  });
  const form = h(
    "form",
    {},
    h("div", { class: "inline" }, field("Policy name", name), field("Schedule", kind), field("At (wall time)", at), field("Policy time zone", tz)),
    weekdays,
    monthly,
    h("div", { class: "inline" }, field("Effective from (browser time; default now)", from), field("Effective until (optional)", until)),
    h("button", { type: "submit", class: "primary", dataset: { action: "create-policy" }, text: "Create policy" }),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const sched = { kind: kind.value, at: at.value };
    if (kind.value === "weekly") sched.weekdays = dayBoxes.filter(([b]) => b.checked).map(([b]) => b.value);
    if (kind.value === "monthly") {
      sched.days = days.value.split(/[\s,]+/).filter(Boolean).map(Number);
      sched.month_end = monthEnd.checked;
    }
    const policy = {
      schedule: sched,
      tz: tz.value,
      effective_from: (from.value ? new Date(from.value) : new Date()).toISOString(),
    };
    if (until.value) policy.effective_until = new Date(until.value).toISOString();
    const body = { name: name.value.trim(), schedule: policy };
    runAction(area, `Create policy ${body.name}`, () => call("POST", "/v1/policies", body), () => {
      name.value = "";
      refresh();
    });
  });
  return h("section", { "aria-labelledby": "newpol-h" }, h("h2", { id: "newpol-h", text: "Create a policy" }), form, area);
}
