// ferry console — the group detail page: summary, actions, live progress and
// the RPO-lag chart, then resources, recovery points, standby points, drill,
// policy and operations. Everything refreshes every 2 s in place.

import { h, replace } from "../dom.js";
import { get, seg, canAct, ApiError } from "../api.js";
import { feedback, facts } from "../ui.js";
import { bytes, rate, seconds, time, words } from "../format.js";
import { every, REFRESH_MS } from "../poll.js";
import { rpoChart } from "../chart.js";
import { groupActions } from "./group-actions.js";
import { stateClass } from "./groups.js";
import {
  resourcesSection,
  pointsSection,
  standbyPointsSection,
  drillSection,
  policySection,
  operationsSection,
} from "./group-sections.js";

export function groupPage(name) {
  let detail = null;
  let policies = [];
  let tick = 0;
  const summary = h("div", { class: "summary" });
  const progress = h("div", { class: "progress-box" });
  const chart = h("div", { class: "chart-box" });
  const missing = h("div", { class: "refusal", role: "alert", hidden: true });
  const ctx = { name, detail: () => detail, area: feedback(), refresh: () => refresh() };

  const resources = resourcesSection(ctx);
  const points = pointsSection(ctx);
  const standby = standbyPointsSection();
  const drill = drillSection();
  const policy = policySection(ctx);
  const ops = operationsSection(name);
  const body = h("div", { hidden: true });
  const toolbar = canAct() ? groupActions(ctx) : null;

  const refresh = async () => {
    try {
      detail = await get(`/v1/groups/${seg(name)}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        missing.hidden = false;
        missing.textContent = `No group ${name} on this site.`;
        body.hidden = true;
        return;
      }
      throw err;
    }
    body.hidden = false;
    missing.hidden = true;
    const g = detail.group;
    if (tick % 15 === 0) policies = await get("/v1/policies");
    renderSummary(summary, detail);
    if (toolbar) placeRoleFirst(toolbar, g.role === "standby" && !g.new_primary ? ".recovery" : ".replication");
    renderProgress(progress, detail.progress, g);
    resources.update(detail);
    points.update(detail);
    drill.update(detail.drill);
    policy.update(g, policies);
    ops.update(detail.operations);
    standby.el.hidden = g.role !== "standby";
    if (g.role === "standby") standby.update(await get(`/v1/groups/${seg(name)}/standby-points`));
    if (tick % 5 === 0) {
      const history = await get(`/v1/groups/${seg(name)}/rpo-history`).catch(() => null);
      replace(chart, rpoChart(history, g.rpo));
    }
    tick += 1;
  };

  replace(
    body,
    summary,
    canAct() ? h("section", { "aria-labelledby": "act-h" }, h("h2", { id: "act-h", text: "Actions" }), toolbar, ctx.area) : null,
    drill.el,
    h("section", { "aria-labelledby": "prog-h" }, h("h2", { id: "prog-h", text: "Replication progress" }), progress, chart),
    resources.el,
    points.el,
    standby.el,
    policy.el,
    ops.el,
  );
  const el = h(
    "section",
    { class: "page", dataset: { group: name } },
    h("p", { class: "crumbs" }, h("a", { href: "#/groups", text: "Protection groups" }), " / ", name),
    h("h1", { text: `Group ${name}` }),
    missing,
    body,
  );
  return { el, title: `Group ${name}`, stop: every(REFRESH_MS, refresh) };
}

/** Puts the action set of the group's role first (in the DOM, so the tab order follows). */
function placeRoleFirst(toolbar, css) {
  const set = toolbar.querySelector(css);
  if (set && toolbar.firstElementChild !== set) toolbar.prepend(set);
}

function renderSummary(el, detail) {
  const g = detail.group;
  el.dataset.state = g.state;
  el.dataset.role = g.role;
  const rpo = g.rpo || {};
  replace(
    el,
    facts([
      ["Role", g.role + (g.new_primary ? " (new primary after failover)" : "") + (g.migrated ? " (migrated)" : "")],
      ["State", h("span", { class: `state ${stateClass(g.state)}`, id: "group-state", text: words(g.state) })],
      ["Remote project", g.remote_project || "—"],
      ["Created", time(g.created_at)],
      ["RPO thresholds", `warning ${rpo.warn_secs ? seconds(rpo.warn_secs) : "off"}, critical ${rpo.crit_secs ? seconds(rpo.crit_secs) : "off"}`],
    ]),
  );
}

function renderProgress(el, p, g) {
  if (!p) {
    el.dataset.state = "none";
    const standby = g.role === "standby" && !g.new_primary;
    replace(
      el,
      h("p", {
        text: standby
          ? "This site holds the standby copies; the primary site drives replication. The chart shows the RPO lag as this site sees it."
          : "Not replicating on this site.",
      }),
    );
    return;
  }
  el.dataset.state = p.state;
  replace(
    el,
    facts([
      ["Replication", words(p.state)],
      ["RPO lag", seconds(p.rpo_lag_secs)],
      ["Standby holds writes before", time(p.standby_holds_writes_before)],
      ["Rate", rate(p.rate)],
      ["Remaining", bytes(p.bytes_remaining)],
      ["Cycles", `${p.cycles} (${p.idle_checks} found nothing changed)`],
      ["Last cycle", seconds(p.last_cycle_seconds)],
      p.last_error ? ["Last error", `${p.last_error} (${words(p.last_error_kind)}, ${p.consecutive_failures} in a row)`] : null,
    ]),
  );
}
