// ferry console — dialogs and action feedback. Destructive actions open an
// in-page <dialog> that says what will happen and to which volumes; its
// confirm button carries `data-confirm`. A refused request is rendered in a
// role="alert" element next to the action; an accepted (202) operation is
// followed until it finishes, its state shown in a role="status" element.

import { h, replace, uid } from "./dom.js";
import { ApiError, waitOperation } from "./api.js";
import { words } from "./format.js";

/**
 * Opens a modal dialog. `body` is a list of nodes (form fields go here);
 * `collect()` reads the values when confirmed (return a string to refuse
 * with that message). Resolves to the collected value, or null on cancel.
 */
export function openDialog({ title, body = [], what, volumes, confirmLabel = "Confirm", danger = false, collect }) {
  return new Promise((resolve) => {
    const titleId = uid("dlg");
    const problem = h("p", { class: "refusal", role: "alert", hidden: true });
    const confirm = h("button", {
      type: "submit",
      class: danger ? "danger" : "primary",
      "data-confirm": "",
      text: confirmLabel,
    });
    const cancel = h("button", { type: "button", "data-cancel": "", text: "Cancel" });
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", { id: titleId, text: title }),
      what ? h("p", { class: "what", text: what }) : null,
      volumes && volumes.length
        ? h(
            "div",
            { class: "volumes" },
            h("p", { text: "Volumes:" }),
            h("ul", {}, volumes.map((v) => h("li", { text: v }))),
          )
        : null,
      body,
      problem,
      h("div", { class: "buttons" }, cancel, confirm),
    );
    const dialog = h("dialog", { "aria-labelledby": titleId }, form);
    let settled = false;
    const finish = (value) => {
      if (settled) return;
      settled = true;
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    cancel.addEventListener("click", () => finish(null));
    dialog.addEventListener("cancel", (ev) => {
      ev.preventDefault();
      finish(null);
    });
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = collect ? collect() : true;
      if (typeof value === "string") {
        problem.textContent = value;
        problem.hidden = false;
        return;
      }
      finish(value);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A feedback area to put next to a set of actions: an alert and an operation status. */
export function feedback() {
  const alert = h("div", { class: "refusal", role: "alert", hidden: true });
  const status = h("p", { class: "op-status", role: "status", "aria-live": "polite" });
  const area = h("div", { class: "feedback" }, alert, status);
  area.showError = (err) => showError(alert, err);
  area.clear = () => {
    alert.hidden = true;
    replace(alert);
    alert.removeAttribute("data-status");
    alert.removeAttribute("data-reason");
  };
  area.status = status;
  area.alert = alert;
  return area;
}

const REFUSALS_KEY = "ferry.refusals";

/**
 * Refusals this browser tab was answered (newest last, at most 50). A
 * refused request changes nothing, so the agent's journal has no entry for
 * it; the group page lists these next to the journal's operations.
 */
export function refusals() {
  try {
    return JSON.parse(sessionStorage.getItem(REFUSALS_KEY) || "[]");
  } catch {
    return [];
  }
}

function remember(err) {
  const r = err.refusal;
  const list = refusals();
  list.push({ at: Date.now(), op: r.op, subject: r.subject, reason: r.reason, message: err.message });
  sessionStorage.setItem(REFUSALS_KEY, JSON.stringify(list.slice(-50)));
}

function showError(alert, err) {
  alert.hidden = false;
  if (err instanceof ApiError && err.refusal) remember(err);
  if (err instanceof ApiError) {
    alert.dataset.status = String(err.status);
    const lines = [h("strong", { text: err.status === 409 && err.refusal ? "Refused: " : "Failed: " }), err.message];
    if (err.refusal) {
      const r = err.refusal;
      alert.dataset.reason = r.reason || "";
      const details = [];
      if (r.reason) details.push(`reason: ${words(r.reason)}`);
      if (r.state) details.push(`group state: ${words(r.state)}`);
      if (r.role) details.push(`role: ${r.role}`);
      if (r.rule && !err.message.includes(r.rule)) details.push(`rule: ${r.rule}`);
      if (r.context && !err.message.includes(r.context)) details.push(r.context);
      lines.push(h("br"), h("span", { class: "reason", text: details.join(" · ") }));
    }
    replace(alert, lines);
  } else {
    replace(alert, h("strong", { text: "Failed: " }), String(err && err.message ? err.message : err));
  }
}

/**
 * Runs one action: `request()` calls the API. A 202 answer's operation is
 * polled until it ends. Errors are shown in `area`; `after()` runs when the
 * request was accepted (and its operation finished).
 */
export async function runAction(area, label, request, after) {
  area.clear();
  // The newest action's status is marked, so it is told apart from the
  // finished ones still shown next to other actions.
  document.querySelectorAll(".op-status[data-latest]").forEach((el) => el.removeAttribute("data-latest"));
  area.status.dataset.latest = "";
  area.status.textContent = `${label}: sending…`;
  area.status.dataset.opState = "sending";
  let result;
  try {
    result = await request();
  } catch (err) {
    area.status.textContent = "";
    area.status.dataset.opState = "refused";
    area.showError(err);
    return null;
  }
  const op = result && result.operation;
  if (!op) {
    area.status.textContent = `${label}: done.`;
    area.status.dataset.opState = "done";
    if (after) after(result);
    return result;
  }
  area.status.dataset.opId = String(op.id);
  let finished = op;
  try {
    finished = await waitOperation(op.id, (current) => showOp(area.status, label, current));
  } catch (err) {
    area.showError(err);
  }
  if (finished.state && finished.state.state === "failed") {
    area.showError(new Error(`operation #${finished.id} ${finished.kind} failed: ${finished.state.reason || ""}`));
  }
  if (after) after(result);
  return finished;
}

function showOp(status, label, op) {
  const state = (op.state && op.state.state) || "running";
  status.dataset.opState = state;
  status.dataset.opId = String(op.id);
  const reason = op.state && op.state.reason ? ` — ${op.state.reason}` : "";
  replace(
    status,
    `${label}: operation `,
    h("a", { href: `#/operations/${op.id}`, text: `#${op.id}` }),
    ` ${op.kind} ${words(state)}${reason}`,
  );
}

/** A read-only textual key/value list. */
export function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(Boolean).map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v instanceof Node ? v : String(v ?? "—"))]),
  );
}
