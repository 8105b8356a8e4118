// ferry console — the entry point: session check, the header (site, access,
// navigation, time zone, sign out) and the hash router that mounts one page
// at a time (#/services, #/groups, #/groups/NAME, #/policies, #/operations).

import { h, replace, field } from "./dom.js";
import { currentSession, resume, setReachableHandler, setUnauthorizedHandler, signOut } from "./api.js";
import { setZone, zone, zones } from "./format.js";
import { signInPage } from "./pages/signin.js";
import { servicesPage } from "./pages/services.js";
import { groupsPage } from "./pages/groups.js";
import { groupPage } from "./pages/group.js";
import { policiesPage } from "./pages/policies.js";
import { operationsPage, operationPage } from "./pages/operations.js";

const header = document.getElementById("site-header");
const main = document.getElementById("main");
// Shown while this agent does not answer (its host down, the network cut):
// the pages keep what they showed last and keep asking.
const unreachable = h("p", {
  class: "refusal unreachable",
  role: "alert",
  hidden: true,
  text: "This agent does not answer: the page shows what it last knew and retries every 2 s.",
});
main.before(unreachable);
setReachableHandler((ok) => {
  if (unreachable.hidden !== ok) unreachable.hidden = ok;
});
let current = null;
let generation = 0;

const NAV = [
  ["#/services", "Sites & services"],
  ["#/groups", "Protection groups"],
  ["#/policies", "Policies"],
  ["#/operations", "Operations"],
];

function renderHeader(route) {
  const s = currentSession();
  // A read-only session has no action column (app.css).
  document.body.classList.toggle("read-only", s.access === "read_only");
  if (!s.access) {
    replace(header, h("span", { class: "brand", text: "ferry" }));
    return;
  }
  const select = h("select", { name: "tz" }, zones().map((z) => h("option", { value: z, selected: z === zone(), text: z })));
  select.addEventListener("change", () => {
    setZone(select.value);
    mount();
  });
  replace(
    header,
    h("span", { class: "brand", text: "ferry" }),
    // The agent's fingerprint: its first 16 digits name the site, as `ferry status` does.
    h("span", { class: "site", title: s.agent || "", text: s.agent ? `agent ${String(s.agent).slice(0, 16)}` : "" }),
    h("span", { class: `access ${s.access}`, text: s.access === "operator" ? "operator" : "read-only" }),
    h(
      "nav",
      { "aria-label": "Main" },
      h(
        "ul",
        {},
        NAV.map(([href, label]) =>
          h("li", {}, h("a", { href, "aria-current": route.startsWith(href) ? "page" : null, text: label })),
        ),
      ),
    ),
    field("Time zone", select),
    h("button", {
      type: "button",
      dataset: { action: "sign-out" },
      text: "Sign out",
      onclick: async () => {
        await signOut();
        location.hash = "#/signin";
        mount();
      },
    }),
  );
}

function route() {
  return location.hash || "#/groups";
}

function pageFor(r) {
  const parts = r.replace(/^#\//, "").split("/").map(decodeURIComponent);
  switch (parts[0]) {
    case "services":
      return servicesPage();
    case "groups":
      return parts[1] ? groupPage(parts[1]) : groupsPage();
    case "policies":
      return policiesPage();
    case "operations":
      return parts[1] ? operationPage(parts[1]) : operationsPage();
    default:
      return groupsPage();
  }
}

async function mount() {
  if (current && current.stop) current.stop();
  current = null;
  // A newer mount (another hash change) wins over this one.
  const mine = ++generation;
  const s = currentSession();
  if (!s.access) {
    const resumed = await resume().catch(() => null);
    if (mine !== generation) return;
    if (!resumed) {
      renderHeader("#/signin");
      current = signInPage(() => {
        if (route() === "#/signin") location.hash = "#/groups";
        else mount();
      });
      replace(main, current.el);
      document.title = "Sign in — ferry";
      return;
    }
  }
  let r = route();
  if (r === "#/signin") {
    r = "#/groups";
    history.replaceState(null, "", r);
  }
  renderHeader(r);
  current = pageFor(r);
  replace(main, current.el);
  document.title = `${current.title} — ferry`;
  main.focus({ preventScroll: true });
}

setUnauthorizedHandler(() => {
  if (current && current.stop) current.stop();
  mount();
});
window.addEventListener("hashchange", mount);
mount();
