/*
 * The rule and segment editor (templates/flags/_rule_editor.html, _targeting_fields.html).
 *
 * The server does the editing: every button of the editor posts the form with htmx and gets
 * the editor back. This file only keeps the page in step while one types, from data attributes:
 *
 *   <div data-rule-editor data-value-hints="{op: hint}" data-focus="id">
 *                                      after a swap, the element `data-focus` names gets the focus
 *                                      (the new row's first field; after a removal, the next
 *                                      control); `data-rules-changed` (a rule or clause removed,
 *                                      rules moved) fires "rules-changed" on the form, which a
 *                                      page with a live preview (the proposal) listens to;
 *   <select data-op-select>            shows the parts of its clause ([data-clause]) that the
 *                                      operator uses ([data-when-op]: attribute, values, typed,
 *                                      segment) and the hint of its values ([data-values-hint]);
 *   <select data-serve data-split-fieldset="id">
 *                                      shows the split fieldset when "a percentage split…" is chosen;
 *   <fieldset data-split>              its [data-split-total] says, while one types, what the
 *                                      percentages add up to ("adds up to 95 % — 5 % short").
 */
(function () {
  "use strict";

  var SPLIT = "__split__";
  var SEGMENT = "in_segment";
  var TYPED = ["equals", "in", "not_in"];
  var WHOLE = 100000; // 100 % in thousandths of a percent, as weights are stored

  function hints(editor) {
    try {
      return JSON.parse(editor.getAttribute("data-value-hints") || "{}");
    } catch (error) {
      return {};
    }
  }

  function showOperatorParts(select) {
    var clause = select.closest("[data-clause]");
    if (!clause) {
      return;
    }
    var op = select.value;
    clause.querySelectorAll("[data-when-op]").forEach(function (part) {
      var when = part.getAttribute("data-when-op");
      var shown = when === "segment" ? op === SEGMENT : when === "typed" ? TYPED.indexOf(op) >= 0 : op !== SEGMENT;
      part.hidden = !shown;
    });
    var hint = clause.querySelector("[data-values-hint]");
    var editor = clause.closest("[data-rule-editor]");
    if (hint && editor) {
      hint.textContent = hints(editor)[op] || "";
    }
  }

  function showSplit(select) {
    var fieldset = document.getElementById(select.getAttribute("data-split-fieldset"));
    if (fieldset) {
      fieldset.hidden = select.value !== SPLIT;
      updateTotal(fieldset);
    }
  }

  function percent(thousandths) {
    return String(thousandths / 1000);
  }

  function updateTotal(fieldset) {
    var output = fieldset.querySelector("[data-split-total]");
    if (!output) {
      return;
    }
    var total = 0;
    fieldset.querySelectorAll("input").forEach(function (input) {
      var value = parseFloat(input.value);
      if (isFinite(value)) {
        total += Math.round(value * 1000);
      }
    });
    if (total === WHOLE) {
      output.textContent = "adds up to 100 %";
    } else {
      output.textContent = "adds up to " + percent(total) + " % — " + percent(Math.abs(WHOLE - total)) + " % " +
        (total < WHOLE ? "short" : "too much");
    }
    output.classList.toggle("split-off", total !== WHOLE);
  }

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (!(target instanceof Element)) {
      return;
    }
    if (target.matches("select[data-op-select]")) {
      showOperatorParts(target);
    } else if (target.matches("select[data-serve]")) {
      showSplit(target);
    }
  });

  document.addEventListener("input", function (event) {
    var fieldset = event.target instanceof Element ? event.target.closest("[data-split]") : null;
    if (fieldset) {
      updateTotal(fieldset);
    }
  });

  function settle() {
    document.querySelectorAll("[data-split]").forEach(updateTotal);
    var editor = document.querySelector("[data-rule-editor][data-focus]");
    if (editor) {
      var focus = document.getElementById(editor.getAttribute("data-focus"));
      editor.removeAttribute("data-focus");
      if (focus) {
        focus.focus();
      }
    }
    var changed = document.querySelector("[data-rule-editor][data-rules-changed]");
    if (changed) {
      changed.removeAttribute("data-rules-changed");
      changed.dispatchEvent(new CustomEvent("rules-changed", {bubbles: true}));
    }
  }

  document.addEventListener("htmx:afterSettle", settle);
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-split]").forEach(updateTotal);
  });
})();
