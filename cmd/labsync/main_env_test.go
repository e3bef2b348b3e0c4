package main

import (
	"testing"

	"github.com/labsync/labsync/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
