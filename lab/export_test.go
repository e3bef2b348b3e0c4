package lab

// SealForTest computes the hash of spec, as Compile does.
func SealForTest(spec *ContainerSpec) string {
	spec.seal()
	return spec.Hash
}
