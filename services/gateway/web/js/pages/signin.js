// Sign in and sign up: one form, two buttons' worth of modes.
import { signIn, signUp } from "../api.js";
import { attempt, field, h, mount, showFieldErrors } from "../ui.js";

export function render(main, { navigate }) {
  let mode = "signin";
  const email = h("input", { type: "email", name: "email", autocomplete: "email", required: true });
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true, minlength: 8 });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const heading = h("h1", {}, "Sign in");
  const toggle = h("button", { type: "button", class: "link" }, "New here? Create an account");
  const form = h("form", { class: "card narrow", novalidate: true },
    heading,
    field("Email", email),
    field("Password", password, "At least 8 characters; a few uncommon words are hard to guess."),
    submit,
    h("p", {}, toggle),
  );
  toggle.addEventListener("click", () => {
    mode = mode === "signin" ? "signup" : "signin";
    heading.textContent = mode === "signin" ? "Sign in" : "Create an account";
    submit.textContent = mode === "signin" ? "Sign in" : "Sign up";
    password.autocomplete = mode === "signin" ? "current-password" : "new-password";
    toggle.textContent = mode === "signin" ? "New here? Create an account" : "Have an account? Sign in";
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showFieldErrors(form, null);
    const done = await attempt(async () => {
      await (mode === "signin" ? signIn : signUp)(email.value.trim(), password.value);
      return true;
    }, { busy: submit, form });
    if (done) navigate("#/workspace");
  });
  mount(main, form);
  email.focus();
}
