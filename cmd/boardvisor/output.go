package main

// The printer of every command that lists or shows something: -o table (the default),
// wide (more columns, labels among them), json or yaml. A command describes its rows
// once, as a struct with json tags (what json and yaml print, in the same keys and
// order) and a list of columns (what the tables print), and calls printList or printOne.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"
)

// Output formats (-o).
const (
	outTable = "table"
	outWide  = "wide"
	outJSON  = "json"
	outYAML  = "yaml"
)

var outputFormats = []string{outTable, outWide, outJSON, outYAML}

// outputFlag is a command's -o flag.
type outputFlag struct{ format string }

// addOutput gives cmd an -o flag (with completion of its values).
func addOutput(cmd *cobra.Command) *outputFlag {
	o := &outputFlag{}
	cmd.Flags().StringVarP(&o.format, "output", "o", outTable, "output format: table, wide (more columns, with labels), json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(outputFormats, cobra.ShellCompDirectiveNoFileComp))
	return o
}

// check fails (a usage error) on an unknown format. Commands call it before they do
// anything, so that a typo costs nothing.
func (o *outputFlag) check() error {
	if !slices.Contains(outputFormats, o.format) {
		return usageError{fmt.Errorf("unknown output format %q (want %s)", o.format, strings.Join(outputFormats, ", "))}
	}
	return nil
}

// Column is one column of a table: its header, whether only -o wide shows it, and the
// text of its cell for a row.
type Column[T any] struct {
	Header string
	Wide   bool
	Cell   func(T) string
}

// printList writes rows in format: a table of cols (wide: with the Wide ones too), or
// a JSON or YAML list of the rows (an empty list, never null).
func printList[T any](w io.Writer, format string, rows []T, cols []Column[T]) error {
	switch format {
	case outJSON, outYAML:
		if rows == nil {
			rows = []T{}
		}
		return printData(w, format, rows)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	var shown []Column[T]
	for _, c := range cols {
		if !c.Wide || format == outWide {
			shown = append(shown, c)
		}
	}
	heads := make([]string, len(shown))
	for i, c := range shown {
		heads[i] = c.Header
	}
	fmt.Fprintln(tw, strings.Join(heads, "\t"))
	for _, r := range rows {
		cells := make([]string, len(shown))
		for i, c := range shown {
			cells[i] = cellText(c.Cell(r))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// printOne writes one row in format: as "HEADER: value" lines for the tables (wide:
// every column), or as a JSON or YAML object.
func printOne[T any](w io.Writer, format string, row T, cols []Column[T]) error {
	switch format {
	case outJSON, outYAML:
		return printData(w, format, row)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for _, c := range cols {
		if c.Wide && format != outWide {
			continue
		}
		if v := cellText(c.Cell(row)); v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", strings.ToLower(c.Header), v)
		}
	}
	return tw.Flush()
}

// cellText keeps a table a table: a cell is one line without tabs.
func cellText(s string) string {
	if !strings.ContainsAny(s, "\t\r\n") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}

// printData writes v as indented JSON, or as YAML with the same keys in the same
// order: the JSON is read back as YAML (JSON is YAML) and written in block style.
func printData(w io.Writer, format string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == outJSON {
		_, err = w.Write(append(data, '\n'))
		return err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(data, &n); err != nil {
		return err
	}
	blockStyle(&n)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// blockStyle clears the flow and quoting styles JSON brought, so the encoder chooses
// (it still quotes a string that would read back as another type).
func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// Cell helpers.

// timeCell shows a time in the local zone, "" for none.
func timeCell(t *time.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return t.Local().Format(time.DateTime)
}

// labelsCell shows labels as a selector would: k=v,k=v, sorted by key.
func labelsCell(labels map[string]string) string {
	keys := slices.Sorted(maps.Keys(labels))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + labels[k]
	}
	return strings.Join(parts, ",")
}
