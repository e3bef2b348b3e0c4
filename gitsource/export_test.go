package gitsource

// SplitCredentials exposes splitCredentials to the tests.
var SplitCredentials = splitCredentials
