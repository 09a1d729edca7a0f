package memstorage

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"testing"
)

func TestList(t *testing.T) {
	ctx := context.Background()
	s := new(Storage)
	for _, k := range []string{"a/b/c", "a/d", "e"} {
		if err := s.Store(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		path      string
		recursive bool
		want      []string
	}{
		{"", true, []string{"a/b/c", "a/d", "e"}},
		{"", false, []string{"a", "e"}},
		{"a", false, []string{"a/b", "a/d"}},
		{"a/", true, []string{"a/b/c", "a/d"}},
	} {
		got, err := s.List(ctx, c.path, c.recursive)
		if err != nil {
			t.Fatalf("List(%q, %v): %v", c.path, c.recursive, err)
		}
		slices.Sort(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("List(%q, %v) = %v, want %v", c.path, c.recursive, got, c.want)
		}
	}
	if _, err := s.List(ctx, "x", true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List of a missing path: %v, want fs.ErrNotExist", err)
	}
}
