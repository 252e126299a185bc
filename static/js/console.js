/*
 * FeatureOps Console: the one script of our own (htmx aside).
 *
 * The Content-Security-Policy runs scripts from our static files only: no inline <script>,
 * no on…= handler, no javascript: URL, no eval. So templates declare behaviour in data
 * attributes and this file gives it. An attribute's value is text, escaped by Django's
 * autoescape and read here with getAttribute: it is shown, never run.
 *
 *   <form data-confirm="Revoke …?">   asks before a plain form submits (htmx-driven elements
 *                                     use hx-confirm instead);
 *   <button data-dismiss="form">      removes its closest "form" (an inline form's Cancel);
 *   <button data-disclosure …>        sets aria-expanded="true" on click (htmx loads what it
 *                                     discloses);
 *   <a data-history-back href="…">    goes back in history (href is where to go without it);
 *   <p data-live hx-get hx-trigger="sse:…" hx-target="#region" …>
 *                                     a live region's refresher (featureops_site/live.py): when
 *                                     its event arrives and the person is typing in the region,
 *                                     the refresh waits and this element (a notice) shows instead,
 *                                     so nobody loses what they typed.
 */
(function () {
  "use strict";

  // Capture phase: ask before any other submit listener sees the event.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-confirm")) {
      return;
    }
    if (!window.confirm(form.getAttribute("data-confirm"))) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  document.addEventListener("click", function (event) {
    if (!(event.target instanceof Element)) {
      return;
    }
    var dismiss = event.target.closest("[data-dismiss]");
    if (dismiss) {
      var dismissed = dismiss.closest(dismiss.getAttribute("data-dismiss"));
      if (dismissed) {
        dismissed.remove();
      }
      return;
    }
    var disclosure = event.target.closest("[data-disclosure]");
    if (disclosure) {
      disclosure.setAttribute("aria-expanded", "true");
      return;
    }
    var back = event.target.closest("a[data-history-back]");
    if (back && window.history.length > 1) {
      event.preventDefault();
      window.history.back();
    }
  });
  function typingIn(region) {
    var active = document.activeElement;
    if (active && region.contains(active) && active.matches("textarea, input, select")) {
      return true;
    }
    return Array.prototype.some.call(region.querySelectorAll("textarea, input[type=text], input:not([type])"),
      function (field) { return field.value.trim() !== ""; });
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    var trigger = event.detail.elt;
    if (!trigger || !trigger.hasAttribute || !trigger.hasAttribute("data-live")) {
      return;
    }
    var region = document.querySelector(trigger.getAttribute("hx-target"));
    if (region && typingIn(region)) {
      event.preventDefault();
      trigger.hidden = false;
    }
  });
})();
