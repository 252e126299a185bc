/*
 * The rule and segment editor: add, remove and move clauses and rules, the split total kept live.
 */
