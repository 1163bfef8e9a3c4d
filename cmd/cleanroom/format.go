package main

import "time"

// Every table prints times in the local zone with its offset, so a time
// copied from a table into a ticket or another tool means the same instant
// everywhere (JSON output keeps the API's RFC 3339 in UTC).
const (
	timeFormat      = time.RFC3339
	timeFormatMilli = "2006-01-02T15:04:05.000Z07:00"
)

// formatTime formats t for a table.
func formatTime(t time.Time) string { return t.Local().Format(timeFormat) }

// whenOr formats t for a table, or returns none when t is nil.
func whenOr(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return formatTime(*t)
}

// printJSONList writes a list for --json: always an array, "[]" when
// empty, never null. A command about one thing prints one object
// (printJSON); a stream (egress) prints one object per line.
func printJSONList[T any](items []T) error {
	if items == nil {
		items = []T{}
	}
	return printJSON(items)
}
