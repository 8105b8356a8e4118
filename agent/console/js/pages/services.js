// ferry console — sites and services: this agent, its services (verify,
// endpoints, delete), issuing this site's one-time service key (on the
// standby), pairing with a remote site's key (on the primary), and QoS.

import { h, field, button, table, patchRows, replace } from "../dom.js";
import { call, get, seg, canAct } from "../api.js";
import { feedback, runAction, openDialog, facts } from "../ui.js";
import { bytes, rate, time } from "../format.js";
import { every, REFRESH_MS } from "../poll.js";

export function servicesPage() {
  const agentBox = h("div");
  const [svcTable, svcBody] = table("Services (paired sites)", [
    "Name",
    "Local endpoint",
    "Remote endpoint",
    "Remote fingerprint",
    "Created",
    "Actions",
  ]);
  const svcArea = feedback();
  const qosBox = h("div", { id: "qos" });
  const qosArea = feedback();

  const refresh = async () => {
    const [status, services, qos] = await Promise.all([get("/v1/status"), get("/v1/services"), get("/v1/qos")]);
    const a = status.agent || {};
    replace(agentBox, facts([["Fingerprint", a.fingerprint], ["Replication endpoint", a.endpoint], ["Operator API", a.api]]));
    patchRows(svcBody, services, (s) => s.id, (s) => JSON.stringify(s), (s) => serviceRow(s, svcArea, refresh));
    if (!services.length) patchRows(svcBody, [{ id: "none" }], (x) => x.id, () => "none", emptyRow(6, "No service yet."));
    replace(
      qosBox,
      facts([
        ["Receive limit", qos.receive_limit ? rate(qos.receive_limit) : "unlimited"],
        ["Send limit", qos.send_limit ? rate(qos.send_limit) : "unlimited"],
      ]),
    );
    qosBox.dataset.qos = JSON.stringify(qos);
  };

  const sections = [
    h("h1", { text: "Sites & services" }),
    h("section", { "aria-labelledby": "agent-h" }, h("h2", { id: "agent-h", text: "This agent" }), agentBox),
    h("section", { "aria-labelledby": "svc-h" }, h("h2", { id: "svc-h", text: "Services" }), svcArea, svcTable),
  ];
  if (canAct()) {
    sections.push(keySection(), pairSection(refresh));
  }
  sections.push(
    h(
      "section",
      { "aria-labelledby": "qos-h" },
      h("h2", { id: "qos-h", text: "QoS (bandwidth limits)" }),
      qosBox,
      canAct() ? button("Set QoS…", "qos", () => qosDialog(qosBox, qosArea, refresh)) : null,
      qosArea,
    ),
  );
  const stop = every(REFRESH_MS * 5, refresh);
  return { el: h("section", { class: "page" }, sections), title: "Sites & services", stop };
}

function emptyRow(cols, text) {
  return () => h("tr", {}, h("td", { colspan: cols, class: "empty", text }));
}

function serviceRow(s, area, refresh) {
  const actions = canAct()
    ? [
        button("Verify", "verify", () =>
          runAction(area, `Verify ${s.name}`, () => call("POST", `/v1/services/${seg(s.name)}/verify`), () => {
            area.status.textContent = `Verify ${s.name}: reachable and paired.`;
          }),
        ),
        button("Endpoints…", "update-service", () => endpointsDialog(s, area, refresh)),
        button(
          "Delete…",
          "delete-service",
          async () => {
            const ok = await openDialog({
              title: `Delete service ${s.name}?`,
              what: `This agent stops trusting the remote site ${s.remote_endpoint} (fingerprint ${s.remote_fingerprint}). Refused while a group uses the service.`,
              confirmLabel: "Delete service",
              danger: true,
            });
            if (ok) runAction(area, `Delete service ${s.name}`, () => call("DELETE", `/v1/services/${seg(s.name)}`), refresh);
          },
          "danger",
        ),
      ]
    : [];
  return h(
    "tr",
    {},
    h("th", { scope: "row", text: s.name }),
    h("td", { text: s.local_endpoint }),
    h("td", { text: s.remote_endpoint }),
    h("td", { class: "mono", text: s.remote_fingerprint }),
    h("td", { text: time(s.created_at) }),
    h("td", { class: "actions" }, actions),
  );
}

async function endpointsDialog(s, area, refresh) {
  const local = h("input", { type: "text", name: "local_endpoint", value: s.local_endpoint || "" });
  const remote = h("input", { type: "text", name: "remote_endpoint", value: s.remote_endpoint || "" });
  const body = await openDialog({
    title: `Endpoints of ${s.name}`,
    body: [field("Local endpoint (HOST:PORT)", local), field("Remote endpoint (HOST:PORT)", remote)],
    confirmLabel: "Save",
    collect: () => ({ local_endpoint: local.value.trim() || null, remote_endpoint: remote.value.trim() || null }),
  });
  if (body) runAction(area, `Update ${s.name}`, () => call("PATCH", `/v1/services/${seg(s.name)}`, body), refresh);
}

function keySection() {
  const endpoint = h("input", { type: "text", name: "endpoint", placeholder: "default: the listen address" });
  const ttl = h("input", { type: "number", name: "ttl_secs", min: "60", value: "3600" });
  const out = h("div", { class: "key-out" });
  const area = feedback();
  const form = h(
    "form",
    { class: "inline" },
    field("Endpoint the primary should use (HOST:PORT)", endpoint),
    field("Valid for (seconds)", ttl),
    h("button", { type: "submit", dataset: { action: "issue-key" }, text: "Issue service key" }),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = { endpoint: endpoint.value.trim() || null, ttl_secs: Number(ttl.value) || null };
    runAction(area, "Issue service key", () => call("POST", "/v1/service/key", body), (key) => {
      const text = h("textarea", { readonly: true, rows: "3", name: "service_key", class: "mono" });
      text.value = key.key;
      replace(
        out,
        field("Service key (give it to the primary site once)", text),
        facts([["Endpoint", key.endpoint], ["Fingerprint", key.fingerprint], ["Expires", time(key.expires_at)]]),
      );
    });
  });
  return h(
    "section",
    { "aria-labelledby": "key-h" },
    h("h2", { id: "key-h", text: "This site's service key (run on the standby)" }),
    form,
    area,
    out,
  );
}

function pairSection(refresh) {
  const name = h("input", { type: "text", name: "name", value: "dr", required: true });
  const key = h("textarea", { name: "key", rows: "3", required: true, class: "mono" });
  const local = h("input", { type: "text", name: "local_endpoint", placeholder: "default: the listen address" });
  const area = feedback();
  const form = h(
    "form",
    {},
    field("Service name (the same on both sites)", name),
    field("Remote site's service key", key),
    field("This agent's endpoint as the peer reaches it (HOST:PORT)", local),
    h("button", { type: "submit", class: "primary", dataset: { action: "pair" }, text: "Pair" }),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = { name: name.value.trim(), key: key.value.trim(), local_endpoint: local.value.trim() || null };
    runAction(area, `Pair ${body.name}`, () => call("POST", "/v1/services", body), () => {
      key.value = "";
      refresh();
    });
  });
  return h(
    "section",
    { "aria-labelledby": "pair-h" },
    h("h2", { id: "pair-h", text: "Pair with a remote site (run on the primary)" }),
    form,
    area,
  );
}

const MIB = 1024 * 1024;

async function qosDialog(qosBox, area, refresh) {
  const now = JSON.parse(qosBox.dataset.qos || "{}");
  const mib = (v) => (v ? String(Math.round((v / MIB) * 100) / 100) : "");
  const receive = h("input", { type: "number", name: "receive_limit", min: "0", step: "any", value: mib(now.receive_limit) });
  const send = h("input", { type: "number", name: "send_limit", min: "0", step: "any", value: mib(now.send_limit) });
  const toBytes = (input) => {
    const v = Number(input.value);
    return input.value.trim() === "" || v === 0 ? null : Math.round(v * MIB);
  };
  const body = await openDialog({
    title: "QoS: bandwidth limits",
    what: `Running syncs follow at once; the limits are kept across restarts. Empty or 0 is unlimited. 1 MiB/s = ${bytes(MIB)}/s.`,
    body: [field("Receive limit (MiB/s): writes into this site's standby images", receive), field("Send limit (MiB/s): this agent's replication traffic", send)],
    confirmLabel: "Apply",
    collect: () => ({ receive_limit: toBytes(receive), send_limit: toBytes(send) }),
  });
  if (body) runAction(area, "Set QoS", () => call("PUT", "/v1/qos", body), refresh);
}
