// Progressive enhancements; every page works without them.
// 1. Live refresh: an element with data-refresh="ms" reloads its content from the same URL
//    with fragment=1, while the tab is visible and no form field in it has focus.
// 2. A form with data-json-field="name" checks that field is JSON before sending it.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach((el) => {
    const every = Number(el.dataset.refresh) || 5000;
    setInterval(async () => {
      if (document.hidden || el.contains(document.activeElement)) return;
      const url = new URL(location.href);
      url.searchParams.set("fragment", "1");
      url.searchParams.delete("flash");
      url.searchParams.delete("error");
      try {
        const r = await fetch(url, { credentials: "same-origin" });
        if (r.ok) el.innerHTML = await r.text();
      } catch (_) { /* the next tick tries again */ }
    }, every);
  });
  document.querySelectorAll("form[data-json-field]").forEach((form) => {
    form.addEventListener("submit", (ev) => {
      const field = form.elements[form.dataset.jsonField];
      const error = document.getElementById(field.getAttribute("aria-describedby"));
      try {
        JSON.parse(field.value);
        field.removeAttribute("aria-invalid");
        if (error) error.textContent = "";
      } catch (e) {
        ev.preventDefault();
        field.setAttribute("aria-invalid", "true");
        if (error) error.textContent = "Not JSON: " + e.message;
        field.focus();
      }
    });
  });
});
