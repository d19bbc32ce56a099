// Body map: tap a region, then (for paired regions) the side is preselected; Left/Right/Both/No side change it.
(() => {
  "use strict";
  const form = document.getElementById("site-form");
  if (!form) return;
  const region = document.getElementById("region");
  const laterality = document.getElementById("laterality");
  const text = document.getElementById("site-text");
  const names = { left: "Left", right: "Right", bilateral: "Both sides" };
  let display = "";

  const showSide = () => {
    form.querySelectorAll("[data-lat]").forEach((b) => {
      b.setAttribute("aria-pressed", b.dataset.lat === laterality.value ? "true" : "false");
    });
    if (display) {
      const side = names[laterality.value];
      text.textContent = side ? side + " · " + display : display;
    }
  };

  const choose = (el) => {
    form.querySelectorAll(".region.on").forEach((r) => r.classList.remove("on"));
    el.classList.add("on");
    region.value = el.dataset.region;
    display = el.dataset.display;
    laterality.value = el.dataset.side || "";
    showSide();
  };

  form.querySelectorAll(".region").forEach((el) => {
    el.addEventListener("click", () => choose(el));
    el.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); choose(el); } });
    if (el.classList.contains("on")) display = el.dataset.display;
  });
  form.querySelectorAll("[data-lat]").forEach((b) => b.addEventListener("click", () => {
    laterality.value = b.dataset.lat;
    showSide();
  }));
  showSide();
})();
