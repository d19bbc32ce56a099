// Written consent: signature_pad (vendored) on a canvas; the PNG goes to the server in a hidden field.
(() => {
  "use strict";
  const canvas = document.getElementById("signature-canvas");
  if (!canvas || !window.SignaturePad) return;
  const pad = new window.SignaturePad(canvas, {
    minWidth: 1.2, maxWidth: 3.2, penColor: "#000", backgroundColor: "rgb(255,255,255)",
  });
  const resize = () => {
    const ratio = Math.max(window.devicePixelRatio || 1, 1);
    const data = pad.toData();
    canvas.width = canvas.offsetWidth * ratio;
    canvas.height = canvas.offsetHeight * ratio;
    canvas.getContext("2d").scale(ratio, ratio);
    pad.clear();
    pad.fromData(data);
  };
  window.addEventListener("resize", resize);
  resize();
  const empty = document.getElementById("signature-empty");
  document.getElementById("signature-clear").addEventListener("click", () => pad.clear());
  document.getElementById("signature-form").addEventListener("submit", (e) => {
    if (e.submitter && e.submitter.hasAttribute("formaction")) return; // withdraw needs no signature
    if (pad.isEmpty()) {
      e.preventDefault();
      e.stopImmediatePropagation();
      empty.classList.remove("hidden");
      return;
    }
    document.getElementById("signature-data").value = pad.toDataURL("image/png");
  }, true);
})();
