// ferry console — the sign-in page: the operator token (or the read-only
// token) is posted once to /ui/session, which answers with an HttpOnly
// session cookie; the token is never put in a URL or kept by the page.

import { h, field } from "../dom.js";
import { signIn } from "../api.js";
import { feedback } from "../ui.js";

export function signInPage(onSignedIn) {
  const token = h("input", { type: "password", name: "token", autocomplete: "current-password", required: true });
  const area = feedback();
  const submit = h("button", { type: "submit", class: "primary", dataset: { action: "sign-in" }, text: "Sign in" });
  const form = h(
    "form",
    { class: "signin" },
    h("h1", { text: "Sign in to ferry" }),
    h("p", {
      text: "Use this agent's operator token (DIR/api.token) or its read-only token (DIR/api.readonly.token).",
    }),
    field("API token", token),
    submit,
    area,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    area.clear();
    submit.disabled = true;
    try {
      await signIn(token.value);
      token.value = "";
      onSignedIn();
    } catch (err) {
      area.showError(err.status === 401 ? new Error("The token was not accepted.") : err);
    } finally {
      submit.disabled = false;
    }
  });
  return { el: h("section", { class: "page" }, form), title: "Sign in", stop: null };
}
