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
 *   <form … data-confirm-from="#id">  takes the question from that element's data-confirm when it
 *                                     has one (a preview swapped in by htmx names the count);
 *   <form data-validate-first>        refuses an empty required field (marked invalid, its
 *                                     message beside it) BEFORE any confirm() dialog: htmx asks
 *                                     hx-confirm before it validates, so this checks on
 *                                     htmx:confirm and on submit (capture phase); the server
 *                                     still checks;
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

  var REQUIRED = "Required: say why. It goes to the audit trail.";

  function clearError(field) {
    var box = field.closest(".field");
    field.removeAttribute("aria-invalid");
    if (box) {
      box.classList.remove("has-error");
      var shown = box.querySelector(".client-error");
      if (shown) {
        shown.remove();
      }
    }
  }

  function showError(field) {
    var box = field.closest(".field") || field.parentNode;
    clearError(field);
    var message = field.getAttribute("data-required-message") || REQUIRED;
    var error = document.createElement("ul");
    error.className = "errorlist client-error";
    error.id = (field.id || field.name) + "_client_error";
    error.setAttribute("role", "alert");
    var item = document.createElement("li");
    item.textContent = message;
    error.appendChild(item);
    box.classList.add("has-error");
    box.appendChild(error);
    field.setAttribute("aria-invalid", "true");
    var described = (field.getAttribute("aria-describedby") || "").split(" ").filter(function (id) {
      return id && id !== error.id;
    });
    described.push(error.id);
    field.setAttribute("aria-describedby", described.join(" "));
  }

  // True when every required text field of the form has something in it; otherwise each
  // empty one is marked with its message and the first gets the focus.
  function requiredFilled(form) {
    var empty = Array.prototype.filter.call(form.querySelectorAll("textarea[required], input[required]"),
      function (field) {
        return !field.disabled && field.type !== "checkbox" && field.type !== "radio" && field.value.trim() === "";
      });
    empty.forEach(showError);
    if (empty.length) {
      empty[0].focus();
    }
    return empty.length === 0;
  }

  function validatingForm(elt) {
    if (!(elt instanceof Element)) {
      return null;
    }
    var form = elt instanceof HTMLFormElement ? elt : (elt.form || elt.closest("form"));
    return form && form.hasAttribute("data-validate-first") ? form : null;
  }

  // htmx fires htmx:confirm before its hx-confirm dialog: an empty reason stops it there.
  document.addEventListener("htmx:confirm", function (event) {
    var form = validatingForm(event.detail.elt);
    if (form && event.detail.verb !== "get" && !requiredFilled(form)) {
      event.preventDefault();
    }
  });

  document.addEventListener("input", function (event) {
    var field = event.target;
    if (field instanceof Element && field.getAttribute("aria-invalid") === "true" && field.value.trim() !== "") {
      clearError(field);
    }
  });

  // Capture phase: check and ask before any other submit listener sees the event.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) {
      return;
    }
    if (form.hasAttribute("data-validate-first") && !requiredFilled(form)) {
      event.preventDefault();
      event.stopImmediatePropagation();
      return;
    }
    if (!form.hasAttribute("data-confirm")) {
      return;
    }
    var question = form.getAttribute("data-confirm");
    var source = form.hasAttribute("data-confirm-from") && document.querySelector(form.getAttribute("data-confirm-from"));
    if (source && source.getAttribute("data-confirm")) {
      question = source.getAttribute("data-confirm");
    }
    if (!window.confirm(question)) {
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
