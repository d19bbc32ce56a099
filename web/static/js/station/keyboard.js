// On-screen keyboard and keypads for the station (Chromium in kiosk mode shows no system keyboard).
// - <input data-osk="text">   : a full keyboard slides up when the field is focused
// - <input data-osk="numeric">: a numeric keypad slides up
// - data-osk-manual           : only opens from a button with data-osk-open="<input id>"
// - .keypad (inline) buttons with data-key type into the focused [data-keypad] field of their form
// Keys never take the focus away from the field (pointerdown is cancelled), so the caret stays put.
(() => {
  "use strict";
  const LETTERS = ["1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm"];
  let target = null;
  let panel = null;
  let layout = null;
  let shift = false;

  function fire(input) {
    input.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function insert(input, text) {
    const start = input.selectionStart ?? input.value.length;
    const end = input.selectionEnd ?? start;
    if (input.maxLength > 0 && input.value.length - (end - start) + text.length > input.maxLength) return;
    input.value = input.value.slice(0, start) + text + input.value.slice(end);
    const caret = start + text.length;
    try { input.setSelectionRange(caret, caret); } catch (e) { /* type=password in some engines */ }
    fire(input);
  }

  function backspace(input) {
    let start = input.selectionStart ?? input.value.length;
    const end = input.selectionEnd ?? start;
    if (start === end && start > 0) start -= 1;
    input.value = input.value.slice(0, start) + input.value.slice(end);
    try { input.setSelectionRange(start, start); } catch (e) { /* ignore */ }
    fire(input);
  }

  function submit(input) {
    const form = input.form;
    if (!form) return;
    const fields = Array.from(form.querySelectorAll("input[data-osk], input[data-keypad], textarea[data-osk]"));
    const next = fields[fields.indexOf(input) + 1];
    if (next && !next.value) { next.focus(); return; }
    const button = form.querySelector("[data-default]") ||
      form.querySelector("button[type=submit]:not([formaction]):not([name]), button:not([type]):not([formaction]):not([name])");
    close();
    if (button) form.requestSubmit(button); else form.requestSubmit();
  }

  function press(input, key) {
    if (!input) return;
    if (key === "Backspace") backspace(input);
    else if (key === "Enter") submit(input);
    else if (key === "Space") insert(input, " ");
    else if (key === "Shift") { shift = !shift; render(); }
    else if (key === "Hide") close();
    else insert(input, shift ? key.toUpperCase() : key);
    if (shift && key.length === 1) { shift = false; render(); }
  }

  function button(key, label, cls) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.key = key;
    b.textContent = label ?? (shift ? key.toUpperCase() : key);
    if (cls) b.className = cls;
    return b;
  }

  function row(keys, cls) {
    const div = document.createElement("div");
    div.className = "keys " + cls;
    keys.forEach((k) => div.appendChild(k));
    return div;
  }

  function render() {
    panel.replaceChildren();
    if (layout === "numeric") {
      const keys = "123456789".split("").map((k) => button(k));
      keys.push(button("Backspace", "⌫"), button("0"), button("Enter", "OK", "enter"));
      panel.appendChild(row(keys, "numeric"));
      return;
    }
    panel.appendChild(row(LETTERS[0].split("").map((k) => button(k)), "r10"));
    panel.appendChild(row(LETTERS[1].split("").map((k) => button(k)), "r10"));
    panel.appendChild(row([document.createElement("span"), ...LETTERS[2].split("").map((k) => button(k)),
      document.createElement("span")], "r9"));
    panel.appendChild(row([button("Shift", "⇧", shift ? "on" : ""), ...LETTERS[3].split("").map((k) => button(k)),
      button("-"), button("Backspace", "⌫")], "r10"));
    panel.appendChild(row([button("Hide", "▼"), button("'"), button("Space", "space"), button("."),
      button("Enter", "OK", "enter")], "bottom"));
  }

  function open(input) {
    target = input;
    const wanted = input.dataset.osk === "numeric" ? "numeric" : "text";
    if (!panel) {
      panel = document.createElement("div");
      panel.className = "osk";
      panel.setAttribute("data-testid", "osk");
      panel.addEventListener("pointerdown", (e) => e.preventDefault());
      panel.addEventListener("mousedown", (e) => e.preventDefault());
      panel.addEventListener("click", (e) => {
        const b = e.target.closest("button[data-key]");
        if (b) press(target, b.dataset.key);
      });
      document.body.appendChild(panel);
    }
    if (layout !== wanted || panel.hidden) { layout = wanted; shift = false; render(); }
    panel.hidden = false;
    document.body.style.setProperty("--osk-h", panel.offsetHeight + "px");  // CSSOM, allowed by the CSP
    document.body.classList.add("osk-open");
    input.scrollIntoView({ block: "nearest" });
  }

  function close() {
    if (panel) panel.hidden = true;
    document.body.classList.remove("osk-open");
  }

  document.addEventListener("focusin", (e) => {
    const input = e.target.closest && e.target.closest("[data-osk]");
    if (input && !input.hasAttribute("data-osk-manual")) open(input);
  });
  // Close on the click, not on pointerdown: closing shrinks the page's bottom padding, and a button that
  // moves between pointerdown and pointerup never receives its click (a tap on Confirm would be lost).
  // The event's path, not e.target.closest: Shift re-renders the keys, so by now the tapped key may be
  // detached from the panel and would look like a tap outside.
  document.addEventListener("click", (e) => {
    if (!panel || panel.hidden) return;
    if (e.composedPath().includes(panel)) return;
    if (e.target.closest && e.target.closest("[data-osk], [data-osk-open]")) return;
    close();
  });
  document.addEventListener("click", (e) => {
    const field = e.target.closest("[data-osk]");
    if (field && !field.hasAttribute("data-osk-manual") && (!panel || panel.hidden)) open(field);
    const opener = e.target.closest("[data-osk-open]");
    if (opener) {
      const input = document.getElementById(opener.dataset.oskOpen);
      if (input) { input.focus(); open(input); }
    }
  });

  // Inline keypads (PIN screens): type into the last focused [data-keypad] field of the same form.
  document.querySelectorAll(".keypad").forEach((pad) => {
    const form = pad.closest("form");
    const fields = form ? Array.from(form.querySelectorAll("[data-keypad]")) : [];
    let last = fields[fields.length - 1] || null;
    fields.forEach((f) => f.addEventListener("focus", () => { last = f; }));
    pad.addEventListener("pointerdown", (e) => { if (e.target.closest("button[data-key]")) e.preventDefault(); });
    pad.addEventListener("mousedown", (e) => { if (e.target.closest("button[data-key]")) e.preventDefault(); });
    pad.addEventListener("click", (e) => {
      const b = e.target.closest("button[data-key]");
      if (!b || !last) return;
      if (b.dataset.key === "Backspace") backspace(last); else insert(last, b.dataset.key);
    });
  });

  const focused = document.activeElement;
  if (focused && focused.matches("[data-osk]:not([data-osk-manual])")) open(focused);  // autofocus

  window.StationKeyboard = { open, close };
})();
