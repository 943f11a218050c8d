// The studio's shell: hash routes, the signed-in guard, navigation.
import { currentUser, onSessionChange, signOut } from "./api.js";
import * as admin from "./pages/admin.js";
import * as jobs from "./pages/jobs.js";
import * as library from "./pages/library.js";
import * as signin from "./pages/signin.js";
import * as workspace from "./pages/workspace.js";
import { clearToasts } from "./ui.js";

const ROUTES = { signin, workspace, jobs, library, admin };
let cleanup = null;

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  const user = currentUser();
  let name = (location.hash.replace(/^#\/?/, "").split(/[/?]/)[0] || "workspace").toLowerCase();
  if (!ROUTES[name]) name = "workspace";
  if (!user && name !== "signin") return navigate("#/signin");
  if (user && name === "signin") return navigate("#/workspace");
  if (name === "admin" && user?.role !== "admin") return navigate("#/workspace");

  if (typeof cleanup === "function") cleanup();
  cleanup = null;
  clearToasts();
  const main = document.getElementById("main");
  main.replaceChildren();
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.route === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · ourvidz studio`;
  cleanup = ROUTES[name].render(main, { navigate, user }) || null;
  // Move focus into the new page, unless the page put it somewhere itself.
  if (!main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

function showAccount(user) {
  document.getElementById("nav").hidden = !user;
  document.getElementById("account").hidden = !user;
  const email = document.getElementById("account-email");
  email.textContent = user ? user.email : "";
  email.title = user ? user.email : ""; // a long address is cut short with an ellipsis
  // A phone hides the email beside the button; the button still says whose account it ends.
  const signout = document.getElementById("signout");
  if (user) signout.title = `Signed in as ${user.email}`;
  else signout.removeAttribute("title");
  document.querySelector('#nav a[data-route="admin"]').hidden = user?.role !== "admin";
}

document.getElementById("signout").addEventListener("click", () => {
  signOut();
  navigate("#/signin");
});
onSessionChange((s) => {
  showAccount(s?.user);
  if (!s) navigate("#/signin");
});
window.addEventListener("hashchange", route);
showAccount(currentUser());
route();
